"""The `onnxplain` command line (installed as the onnxplain_cli package)."""
