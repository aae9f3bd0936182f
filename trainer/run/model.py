"""Model and tokenizer: safetensors only, no remote code, tags as special tokens."""

from __future__ import annotations

from pathlib import Path

from trainer.run import builtin
from trainer.run.config import TrainConfig, UsageError

# BART's learned positions keep 2 slots for an offset: 1026 positions -> 1024 tokens in.
BART_POSITION_OFFSET = 2
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def resolve_model_path(config: TrainConfig) -> str:
    if config.model_name_or_path == builtin.TINY:
        return str(builtin.tiny_model(config.cache_dir))
    return config.model_name_or_path


def load_model_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model_name_or_path {path!r}: cannot load its config: {first_line(error)}") from None


def max_input_tokens(model_config) -> int | None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - BART_POSITION_OFFSET if model_config.model_type in ("bart", "mbart") else positions


def check_lengths(config: TrainConfig, model_config) -> None:
    limit = max_input_tokens(model_config)
    for flag in ("encoder_max_len", "decoder_max_len", "generation_max_length"):
        value = getattr(config, flag)
        if limit is not None and value > limit:
            raise UsageError(f"--{flag}={value} exceeds the model's {limit} positions; use at most {limit}")


def check_tokenizer_files(path: str) -> None:
    """A local model folder has its tokenizer: without one, transformers builds a tokenizer of the five
    special tokens from the config's model type, and every text becomes <unk>."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES) \
            and not any(folder.glob("*.model")):
        raise UsageError(f"--model_name_or_path {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)} or "
                         "a sentencepiece *.model); save the tokenizer there too (tokenizer.save_pretrained)")


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__


def load_tokenizer(path: str, tags: list[str]):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as error:  # a damaged tokenizer.json is a JSONDecodeError
        raise UsageError(f"--model_name_or_path {path!r}: cannot load its tokenizer: {first_line(error)}") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise UsageError(f"--model_name_or_path {path!r}: its tokenizer has only the special tokens "
                         f"{' '.join(tokenizer.all_special_tokens)}; every text would become <unk>")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise UsageError(f"--model_name_or_path {path!r}: tokenizer lacks bos/eos/pad tokens")
    # Special, so they are never split into pieces; decoding keeps them (see rouge.clean_prediction).
    tokenizer.add_tokens(tags, special_tokens=True)
    return tokenizer


def load_model(path: str, tokenizer, model_config):
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM

    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(path, config=model_config, use_safetensors=True,
                                                      trust_remote_code=False)
    except SafetensorError as error:  # a truncated or damaged file: the header does not match the data
        raise UsageError(f"--model_name_or_path {path!r}: damaged safetensors weights ({first_line(error)}); "
                         "download or copy the model again") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"--model_name_or_path {path!r}: cannot load safetensors weights: {first_line(error)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    align_generation(model, tokenizer)
    return model


def align_generation(model, tokenizer) -> None:
    """Use one decoder start token for training (labels shifted right) and for generate()."""
    start = model.config.decoder_start_token_id
    if start is None:
        start = tokenizer.eos_token_id
        model.config.decoder_start_token_id = start
    generation = model.generation_config
    generation.decoder_start_token_id = start
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
