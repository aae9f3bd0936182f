"""Make builtin:tiny, a small BART pretrained on synthetic Korean text as KoBART is on real text.

    python -m trainer.run.pretrain           rewrite trainer/run/tiny/ (minutes on 2 CPU cores)
    python -m trainer.run.pretrain --check   build it again in a temporary folder, compare with the shipped one

A randomly initialised model learns nothing at the Experiments' learning rates (1e-5 to 5e-4) in a
smoke budget: every trial scored 0 and a search had no landscape. This one is pretrained with BART's
text infilling (spans of the input replaced by <mask>, the whole text as the target) on dialogues and
summaries from the sample's own generator, drawn with another seed and skipping every slot
combination of the sample's train and dev splits, so fine-tuning still has to teach the task. Like a
pretrained checkpoint, it starts by copying the dialogue (rouge_avg about 0.2), learns the summaries
within a few epochs at 5e-4 and hardly moves at 1e-5.

The result is shipped (trainer/run/tiny/, 1.7 MB) so neither CI nor `make search` pays for the
pretraining; recipe.json there records RECIPE and the digests of the corpus and tokenizer it was made
from, and tests/test_builtin.py checks them against this code.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

from trainer.run import builtin

RECIPE = {
    "corpus_seed": 1, "corpus_size": 2000,  # dialogue/summary pairs; each gives two texts
    "mask_ratio": 0.3, "mean_span": 3,      # tokens hidden per text, average span length
    "seed": 0, "steps": 400, "batch_size": 32, "learning_rate": 3e-3, "warmup_steps": 30,
    "threads": 1,                           # one thread: the same float sums in the same order on every run
}
IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3, "decoder_start_token_id": 1, "forced_eos_token_id": 1}
MASK_ID = builtin.SPECIAL_TOKENS.index("<mask>")


def corpus() -> list[tuple[str, str]]:
    """(dialogue, summary) pairs of the sample's topics, none with a slot combination of train or dev."""
    held = {(r["topic"], tuple(sorted(r["slots"].items()))) for split in builtin.SIZES for r in builtin.examples(split)}
    rng = random.Random(RECIPE["corpus_seed"])
    pairs, drawn = [], 0
    while len(pairs) < RECIPE["corpus_size"]:
        row = builtin.generate(list(builtin.TOPICS)[drawn % len(builtin.TOPICS)], rng)
        drawn += 1
        if row["key"] not in held:
            pairs.append((row["dialogue"], row["summary"]))
    return pairs


def tiny_tokenizer():
    """The sample's BPE tokenizer with KoBART's special tokens, plus the sample's tags (as the trainer
    adds them) so the pretraining sees #Person1# and co. as whole tokens."""
    from transformers import PreTrainedTokenizerFast

    rows = builtin.examples("train")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=builtin.train_tokenizer([r["dialogue"] for r in rows] + [r["summary"] for r in rows]),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=1024,
    )
    tokenizer.add_tokens(sorted(builtin.TAGS.values()), special_tokens=True)
    return tokenizer


def infill(ids: list[int], rng: random.Random) -> list[int]:
    """<s> text </s> with about mask_ratio of the text's tokens hidden, each span as one <mask>."""
    body, out, i = ids[1:-1], [], 0
    start = RECIPE["mask_ratio"] / RECIPE["mean_span"]  # chance that a span starts at a token
    while i < len(body):
        if rng.random() < start:
            out.append(MASK_ID)
            i += 1 + int(rng.expovariate(1 / (RECIPE["mean_span"] - 1)))
        else:
            out.append(body[i])
            i += 1
    return [ids[0], *out, ids[-1]]


def batch(texts: list[list[int]], rng: random.Random):
    import torch

    targets = [texts[rng.randrange(len(texts))] for _ in range(RECIPE["batch_size"])]
    inputs = [infill(t, rng) for t in targets]
    width, depth = max(map(len, inputs)), max(map(len, targets))
    x = torch.tensor([row + [IDS["pad_token_id"]] * (width - len(row)) for row in inputs])
    y = torch.tensor([row + [-100] * (depth - len(row)) for row in targets])
    return x, (x != IDS["pad_token_id"]).long(), y


def pretrain(tokenizer, steps: int):
    """A fresh tiny BART (seeded) after `steps` denoising steps on the corpus."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    from trainer.run.data import encode

    pairs = corpus()
    texts = encode(tokenizer, [t for pair in pairs for t in pair], 512)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=1026, **IDS,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(RECIPE["threads"])
    try:
        with torch.random.fork_rng(devices=[]):  # deterministic weights without disturbing the caller's seed
            torch.manual_seed(RECIPE["seed"])
            model = BartForConditionalGeneration(config)
            model.generation_config = GenerationConfig(**IDS, max_length=128)
            rng = random.Random(RECIPE["seed"])
            optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["learning_rate"], weight_decay=0.01)
            warmup = RECIPE["warmup_steps"]
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / max(steps, 1)))
            model.train()
            for step in range(steps):
                x, mask, y = batch(texts, rng)
                loss = model(input_ids=x, attention_mask=mask, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                if step % 50 == 0 or step == steps - 1:
                    print(f"step {step + 1}/{steps} loss={loss.item():.4f}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def recipe(tokenizer) -> dict:
    """What recipe.json records: the settings and what they were applied to."""
    from trainer.run.data import tokenizer_fingerprint

    pairs = json.dumps(corpus(), ensure_ascii=False).encode("utf-8")
    return {**RECIPE, "corpus_sha256": hashlib.sha256(pairs).hexdigest(),
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}


def build(directory: Path) -> None:
    from transformers.utils import logging as hf_logging

    tokenizer = tiny_tokenizer()
    model = pretrain(tokenizer, RECIPE["steps"])
    directory.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "recipe.json").write_text(json.dumps(recipe(tokenizer), indent=1) + "\n", encoding="utf-8")


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            same = same_weights(Path(tmp), builtin.TINY_DIR)
        print(f"{builtin.TINY_DIR}: {'reproduced exactly' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    if argv:
        print("usage: python -m trainer.run.pretrain [--check]", file=sys.stderr)
        return 2
    build(builtin.TINY_DIR)
    print(f"wrote {builtin.TINY_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
