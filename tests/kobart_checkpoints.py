"""Offline stand-ins for the three real KoBART checkpoints: their config.json fields and tokenizer
special-token layout, with tiny weights (d_model 32, one layer each side) and the built-in tokenizer,
whose special tokens sit at KoBART's ids (<s>=0 </s>=1 <usr>=2 <pad>=3 <sys>=4 <unk>=5 <mask>=6).

The id fields are those DESIGN.md records for the hub files; the legacy keys (kobart_version,
extra_pos_embeddings, ...) are what KoBART's transformers-4.x era configs carry, which transformers 5
must still read. base-v2 is a bare BartModel (no lm_head), like the hub's pretraining checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.run import builtin

LEGACY = {"kobart_version": 2.0, "author": "Heewon Jeon(madjakarta@gmail.com)", "extra_pos_embeddings": 2,
          "normalize_embedding": True, "normalize_before": False, "add_final_layer_norm": False,
          "static_position_embeddings": False, "add_bias_logits": False, "do_blenderbot_90_layernorm": False,
          "tokenizer_class": "PreTrainedTokenizerFast"}
CHECKPOINTS = {
    "gogamza/kobart-base-v2": {"architectures": ["BartModel"], "bos_token_id": 0, "eos_token_id": 1,
                               "pad_token_id": 3, "decoder_start_token_id": 1, "forced_eos_token_id": 1, **LEGACY},
    "gogamza/kobart-summarization": {"architectures": ["BartForConditionalGeneration"], "bos_token_id": 0,
                                     "eos_token_id": 1, "pad_token_id": 3, "decoder_start_token_id": 1,
                                     "forced_eos_token_id": 1, **LEGACY},
    # The competition baseline's model: its decoder starts from id 2 (<usr>), and 2 is forced at the end.
    "digit82/kobart-summarization": {"architectures": ["BartForConditionalGeneration"], "bos_token_id": 0,
                                     "eos_token_id": 1, "pad_token_id": 3, "decoder_start_token_id": 2,
                                     "forced_eos_token_id": 2},
}
SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                      "mask_token": "<mask>"}
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1026)


def build(name: str, directory: Path, safetensors: bool = True) -> Path:
    """A folder laid out like the hub checkpoint `name`; safetensors=False writes only pytorch_model.bin,
    as digit82/kobart-summarization's main branch has."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BartModel, PreTrainedTokenizerFast

    fields = CHECKPOINTS[name]
    rows = builtin.examples("train")
    tok = builtin.train_tokenizer([r["dialogue"] for r in rows] + [r["summary"] for r in rows])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1024, **SPECIAL_TOKENS_MAP)
    ids = {k: v for k, v in fields.items() if k.endswith("_token_id")}
    config = BartConfig(vocab_size=len(tokenizer), **TINY, **ids)
    architecture = BartModel if fields["architectures"] == ["BartModel"] else BartForConditionalGeneration
    torch.manual_seed(0)
    model = architecture(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if not safetensors:  # transformers 5 writes safetensors only: the old pickle format by hand
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    tokenizer.save_pretrained(directory)
    (directory / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP), encoding="utf-8")
    saved = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    (directory / "config.json").write_text(json.dumps({**saved, **fields}, indent=2), encoding="utf-8")
    (directory / "generation_config.json").unlink(missing_ok=True)  # the hub repos have none
    return directory
