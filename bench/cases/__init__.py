"""One module per benchmark case; see bench/common.py for what a case provides."""
