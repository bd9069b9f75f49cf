"""One module per DVC stage, each with a single public ``run(...)``; they talk only through files."""
