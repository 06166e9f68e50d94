"""`moemerge ui`: a Gradio page over the CLI's own library functions (config, merge, inspect, tune, publish)."""
