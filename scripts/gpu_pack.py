"""Trials packed on one GPU: total training samples/s of N trainer processes at once on GPU 0.

    python scripts/gpu_pack.py OUT.json [N ...]      (default N: 1 2 4)
    env MODEL=DIR (a local model, or builtin:tiny; default the bench's small random BART), STEPS
    (default 300), EXAMPLES (synthetic training examples, default the competition's 12457)

Each process is `trainer bench`'s measured run (trainer/bench/work.py: STEPS optimizer steps with
the bench's common flags, bf16 where the GPU has it, then its evaluation of 8 examples), all N
started together with CUDA_VISIBLE_DEVICES=0, from a tokenization cache filled beforehand. Total
samples/s = every sample the N trained / (last training end - first training start): start-up
jitter counts against packing, never for it.
"""

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.bench import command as bench
from trainer.run.config import default_cache_dir


def packed(n: int, flags: list[str], steps: int, work: Path, env: dict) -> dict:
    def one(i: int) -> dict:
        return bench.run_worker([f"trial={steps}", *flags, f"--output_dir={work / 'runs' / f'{n}-{i}'}"], env)

    with ThreadPoolExecutor(n) as pool:
        marks = list(pool.map(one, range(n)))
    samples = sum(m["steps"] * bench.TRAIN_BATCH for m in marks)
    window = max(m["train_end"] for m in marks) - min(m["train_start"] for m in marks)
    alone = [m["steps"] * bench.TRAIN_BATCH / (m["train_end"] - m["train_start"]) for m in marks]
    return {"trials": n, "total_train_samples_per_s": round(samples / window, 2),
            "per_trial_samples_per_s": [round(a, 2) for a in alone],
            "peak_gpu_mb": [round(m.get("peak_gpu_mb", 0)) for m in marks]}


def main(output: str, counts: list[int]) -> None:
    steps = int(os.environ.get("STEPS", "300"))
    env = {**bench.worker_env(0), "CUDA_VISIBLE_DEVICES": "0"}
    with tempfile.TemporaryDirectory(prefix="trainer-pack-") as tmp:
        work = Path(tmp)
        model = bench.resolve_model(os.environ.get("MODEL", ""), work, default_cache_dir())
        device, precision = bench.device_flags()
        files, _ = bench.make_data(model, work, int(os.environ.get("EXAMPLES", bench.COMPETITION["train"])))
        flags = [*bench.COMMON_FLAGS, *precision, f"--model_name_or_path={model}", f"--train_file={files['train']}",
                 f"--eval_file={files['dev']}", "--max_eval_samples=8", f"--cache_dir={work / 'cache'}"]
        bench.run_worker(["startup", *flags, f"--output_dir={work / 'runs' / 'warm-up'}"], env)  # fills the cache
        results = []
        for n in counts:
            results.append(packed(n, flags, steps, work, env))
            print(json.dumps(results[-1]), flush=True)
    single = results[0]["total_train_samples_per_s"] if results[0]["trials"] == 1 else None
    for r in results:
        gain = f" ({r['total_train_samples_per_s'] / single:.2f}x one trial)" if single else ""
        print(f"{r['trials']} trials on one GPU: {r['total_train_samples_per_s']} training samples/s in all{gain}")
    Path(output).write_text(json.dumps({"device": device, "steps": steps, "flags": flags[:-1], "results": results},
                                       indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], [int(n) for n in sys.argv[2:]] or [1, 2, 4])
