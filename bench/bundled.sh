#!/usr/bin/env bash
# The bundled-model quality run behind the figures in the notes: SFT, simulated feedback, a reward
# model, then best-of-4, PPO, RLOO, GRPO and DPO from the same SFT model and reward model, each evaluated
# against SFT on the 40 held-out prompts (paired gold win rate, KL). About an hour on 2 CPU cores.
#   bash bench/bundled.sh [WORKSPACE]      (default /tmp/tether-bundled; it is deleted first)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T=.venv/bin/tether
W=${1:-/tmp/tether-bundled}
rm -rf "$W"
stage() { local s=$(date +%s); "$@"; echo "== $(( $(date +%s) - s )) s: ${*:1:2}"; }
stage $T init "$W"
stage $T import prompts tether/assets/prompts.jsonl -w "$W"     # 112 train + 40 eval
stage $T import demos tether/assets/demos.jsonl -w "$W"         # 112 labeler-written answers
stage $T sft --epochs 2 -w "$W"                                 # becomes the workspace policy
SFT=$(ls -d "$W"/runs/sft-*/model | tail -1)
# bf16 autocast for the reward model where the CPU has bf16 matmuls (AVX512-BF16 / AMX), else fp32
DTYPE=float32; grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && DTYPE=bfloat16
stage $T sample --k 4 --max-new-tokens 64 -w "$W"
stage $T label --simulated --items 490 -w "$W"                  # 20 labelers, 3 per item: ~2,000 pairs
stage $T sample --k 4 --max-new-tokens 64 --split eval -w "$W"  # held-out prompts: never labelled
stage $T rm --train-layers 8 --batch-size 8 --dtype $DTYPE -w "$W"
RM=$(ls -d "$W"/runs/rm-*/model | tail -1)
stage $T score --split eval -w "$W"                             # RM vs gold on unseen prompts; labelers vs gold
stage $T bon --n 4 --reward-model "$RM" -w "$W"
evaluate() { stage $T eval --policy "$(ls -d "$W"/runs/$1-*/model | tail -1)" --reference "$SFT" \
                 --reward-model "$RM" --samples 2 --max-new-tokens 64 -w "$W"; }
stage $T ppo --reward-model "$RM" --updates 20 --batch-size 16 --mini-batch-size 8 --ppo-epochs 1 -w "$W"
evaluate ppo
stage $T rloo --reward-model "$RM" --policy "$SFT" --updates 20 --prompts-per-update 4 --k 4 -w "$W"
evaluate rloo
stage $T grpo --reward-model "$RM" --policy "$SFT" --updates 20 --prompts-per-update 4 --k 4 -w "$W"
evaluate grpo
stage $T dpo --model "$SFT" --lr 5e-6 -w "$W"
evaluate dpo
