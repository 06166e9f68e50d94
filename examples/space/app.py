"""moemerge's page as a Hugging Face Space: models come from the Hub, outputs stay in the Space's work folder."""

import os
from pathlib import Path

import torch

from moemerge.ui.app import launch

# A Space serves on 0.0.0.0:7860 behind Hugging Face's proxy; typed paths stay inside WORK (no --allow-any-path).
WORK = Path(os.environ.get("MOEMERGE_WORKDIR", "/tmp/moemerge-work"))

if __name__ == "__main__":
    launch(host="0.0.0.0", port=int(os.environ.get("PORT", "7860")), workdir=WORK,
           device="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
