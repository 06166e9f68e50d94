"""Model sources: a local folder or Hub snapshot (folder, hub, hub_reach), a LoRA adapter as a source (lora_config,
lora_source), and reading without trusting: small JSON files and safetensors headers (headers), dtypes in numpy (arrays)."""
