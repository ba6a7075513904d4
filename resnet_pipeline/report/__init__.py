"""Reports: the paper's figures from our runs (`plots`, matplotlib) and report.md/report.html
(`build`, from the evaluation's outputs). Importing this package imports nothing heavy."""
