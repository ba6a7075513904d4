"""Entry point: `python cli.py --help`. The commands live in resnet_pipeline/cli.py."""

from resnet_pipeline.cli import main

if __name__ == "__main__":
    main()
