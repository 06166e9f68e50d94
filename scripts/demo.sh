#!/usr/bin/env bash
# The offline demo: build the real base and its three domain experts (cached after the first run), merge them with
# examples/configs/demo.yaml, then show the MoE's answers, where each domain's held-out prompts are routed, and how
# its loss compares with the base and each expert on held-out text; then train its routers (moemerge tune) and
# show both again.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }
step "1/8 installing (scripts/setup.sh)"
bash scripts/setup.sh
. .venv/bin/activate
step "2/8 the real base and experts (first run: about 5 minutes on 2 cores; then cached)"
python -m moemerge.real --link demo/models
step "3/8 merging: moemerge examples/configs/demo.yaml demo/out"
moemerge examples/configs/demo.yaml demo/out --overwrite
step "4/8 routing of each domain's held-out prompts: moemerge route"
moemerge route demo/out --prompts demo/models/data/held_out_prompts.yaml
DATA="--data code=demo/models/data/code.txt --data math=demo/models/data/math.txt --data prose=demo/models/data/prose.txt"
step "5/8 held-out loss of the base, each expert and the MoE: moemerge eval --compare"
moemerge eval demo/out --compare --max-tokens 2048 $DATA
step "6/8 training the routers on each domain's training text: moemerge tune (about 2 minutes)"
moemerge tune demo/out --data code=demo/models/data/code.train.txt --data math=demo/models/data/math.train.txt \
  --data prose=demo/models/data/prose.train.txt
step "7/8 after tune: moemerge eval --compare and moemerge route again"
moemerge eval demo/out --compare --max-tokens 2048 $DATA
moemerge route demo/out --prompts demo/models/data/held_out_prompts.yaml
step "8/8 the MoE's greedy chat answers, with the routing and eval tables (python examples/show.py demo/out)"
python examples/show.py demo/out
