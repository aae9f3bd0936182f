"""Model and tokenizer: safetensors only, no remote code, tags as special tokens."""

from __future__ import annotations

from pathlib import Path

from trainer.errors import UsageError, first_line
from trainer.run import builtin
from trainer.run.config import TrainConfig

# BART's learned positions keep 2 slots for an offset: 1026 positions -> 1024 tokens in.
BART_POSITION_OFFSET = 2
SAFETENSORS_HINT = ("this trainer loads safetensors weights only (pickle-free); convert it, or pass --revision "
                    "of a branch that has model.safetensors (digit82/kobart-summarization: --revision=refs/pr/1)")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def resolve_model_path(config: TrainConfig) -> str:
    """The folder or hub id to load. A local folder must hold safetensors weights (one with only
    pytorch_model.bin, a pickle, is refused) and its tokenizer files, checked here before anything
    loads: training, evaluate and predict all come through this."""
    if config.model_name_or_path == builtin.TINY:
        path = str(builtin.tiny_model())
    else:
        path = config.model_name_or_path
    folder = Path(path)
    if folder.is_dir():
        if config.revision:
            raise UsageError(f"--revision={config.revision} names a hub branch, tag or commit; "
                             f"--model_name_or_path {path!r} is a local folder")
        if not list(folder.glob("*.safetensors")) and list(folder.glob("pytorch_model*.bin")):
            raise UsageError(f"--model_name_or_path {path!r} has only pytorch_model.bin: {SAFETENSORS_HINT}")
        check_tokenizer_files(path)
    return path


def load_model_config(path: str, revision: str = ""):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision or None, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model_name_or_path {path!r}: cannot load its config: {first_line(error)}") from None


def set_dropout(model_config, config: TrainConfig) -> None:
    """--dropout and --attention_dropout into the model's config before the model is built from it
    (unset: the checkpoint's own values); the saved best_model/config.json records what trained."""
    for name in ("dropout", "attention_dropout"):
        value = getattr(config, name)
        if value is None:
            continue
        if not hasattr(model_config, name):
            raise UsageError(f"--{name}: model type {model_config.model_type!r} has no {name!r} setting in its "
                             "config (BART-style models have one); leave it unset")
        setattr(model_config, name, value)


def max_input_tokens(model_config) -> int | None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - BART_POSITION_OFFSET if model_config.model_type in ("bart", "mbart") else positions


def check_lengths(config: TrainConfig, model_config, flags=("encoder_max_len", "decoder_max_len",
                                                            "generation_max_length")) -> None:
    limit = max_input_tokens(model_config)
    for flag in flags:
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


def load_tokenizer(path: str, tags: list[str], revision: str = ""):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision or None, trust_remote_code=False)
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


def load_model(path: str, tokenizer, model_config, revision: str = ""):
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM

    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(path, config=model_config, revision=revision or None,
                                                      use_safetensors=True, trust_remote_code=False)
    except SafetensorError as error:  # a truncated or damaged file: the header does not match the data
        raise UsageError(f"--model_name_or_path {path!r}: damaged safetensors weights ({first_line(error)}); "
                         "download or copy the model again") from None
    except (OSError, ValueError) as error:
        if "does not appear to have a file named model.safetensors" in str(error):  # a hub repo without them
            at = f" at --revision={revision}" if revision else " on its main branch"
            raise UsageError(f"--model_name_or_path {path!r} has no model.safetensors{at} (only "
                             f"pytorch_model.bin?): {SAFETENSORS_HINT}") from None
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


def set_decoding(model, config: TrainConfig) -> None:
    """The decoding flags into the model's generation config: what training's evaluations,
    `trainer evaluate` and `trainer predict` all generate with."""
    generation = model.generation_config
    generation.num_beams = config.num_beams
    generation.no_repeat_ngram_size = config.no_repeat_ngram_size
    generation.length_penalty = config.length_penalty
    generation.max_length = config.generation_max_length
    generation.min_new_tokens = config.min_new_tokens or None
    generation.repetition_penalty = config.repetition_penalty
    if config.lean_beam_search and model.config.is_encoder_decoder:
        model._reorder_cache = reorder_self_attention_only


def reorder_self_attention_only(cache, beam_idx):
    """Beam search's cache reordering without the cross-attention half. Those keys/values come from
    the encoder output, identical for every beam of an example, and beams are only ever reordered
    within their example: copying them each step (batch x beams x input length x d_model, per layer)
    changes nothing. Set as the model's _reorder_cache, which generate() calls when present."""
    from transformers.cache_utils import EncoderDecoderCache

    if isinstance(cache, EncoderDecoderCache):
        cache.self_attention_cache.reorder_cache(beam_idx)
    else:
        cache.reorder_cache(beam_idx)
    return cache
