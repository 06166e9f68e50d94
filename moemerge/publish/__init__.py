"""What goes out with a model: its card (card), the charts (charts) and the upload to the Hub (upload)."""
