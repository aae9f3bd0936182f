"""The built-in sample data and tiny model: offline, deterministic, learnable."""

import json
import math
import re

import pandas as pd
import pytest

from trainer.run import builtin, pretrain, rouge

TAG = re.compile(r"#\w+#")


@pytest.fixture(scope="module")
def tiny():
    return builtin.tiny_model()


def read(split, cache_dir):
    return pd.read_csv(builtin.sample_csv(split, cache_dir))


def test_csv_layout_and_multiline_dialogues(tmp_path):
    for split, size in builtin.SIZES.items():
        path = builtin.sample_csv(split, tmp_path)
        assert path == tmp_path / "builtin" / "sample-v1" / f"{split}.csv"
        df = pd.read_csv(path)
        assert list(df.columns) == ["fname", "dialogue", "summary", "topic"]
        assert len(df) == size
        assert df.fname.tolist() == [f"{split}_{i}" for i in range(size)]
        for dialogue in df.dialogue:
            lines = dialogue.split("\n")
            assert 4 <= len(lines) <= 8
            assert all(re.match(r"#Person[123]#: \S", line) for line in lines), dialogue
        # the CSV holds exactly what the generator made, so checks on examples() hold for the file
        rows = builtin.examples(split)
        assert df.dialogue.tolist() == [r["dialogue"] for r in rows]
        assert df.summary.tolist() == [r["summary"] for r in rows]


def test_csv_is_deterministic_and_written_once(tmp_path):
    a = builtin.sample_csv("train", tmp_path / "a")
    b = builtin.sample_csv("train", tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    mtime = a.stat().st_mtime_ns
    assert builtin.sample_csv("train", tmp_path / "a") == a
    assert a.stat().st_mtime_ns == mtime
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="test"):
        builtin.sample_csv("test", tmp_path)
    assert not (tmp_path / "builtin").exists()


def test_dev_is_held_out(tmp_path):
    train, dev = read("train", tmp_path), read("dev", tmp_path)
    assert not set(train.dialogue) & set(dev.dialogue)
    combos = {(r["topic"], tuple(sorted(r["slots"].items()))) for r in builtin.examples("train")}
    assert not any((r["topic"], tuple(sorted(r["slots"].items()))) in combos for r in builtin.examples("dev"))


def test_summaries_follow_from_dialogues():
    for split in builtin.SIZES:
        for row in builtin.examples(split):
            for word in row["slots"].values():
                assert word in row["dialogue"] and word in row["summary"], (word, row)
            assert set(TAG.findall(row["summary"])) <= set(TAG.findall(row["dialogue"])), row
            assert re.search(r"#Person\d#", row["summary"]), row
            assert 15 <= len(row["summary"].split()) <= 30, row["summary"]
            assert 40 <= len(row["dialogue"].split()) <= 120, row["dialogue"]


def test_topics_speakers_and_masking_tags(tmp_path):
    df = read("train", tmp_path)
    assert df.topic.nunique() >= 6
    assert df.dialogue.str.contains("#Person3#").any()
    assert (~df.dialogue.str.contains("#Person3#")).any()
    summary_tags = set(TAG.findall(" ".join(df.summary)))
    assert {"#PhoneNumber#", "#Address#", "#Email#", "#DateOfBirth#", "#Person3#"} <= summary_tags
    assert (~df.dialogue.str.contains("#Address#")).any()  # masking tags only in some dialogues


@pytest.mark.parametrize("word, particle, expected", [
    ("#Person1#", "는", "#Person1#은"),
    ("#Person2#", "은", "#Person2#는"),
    ("#Email#", "으로", "#Email#로"),
    ("부산", "로", "부산으로"),
    ("기차", "이", "기차가"),
    ("3년", "와", "3년과"),
    ("두 명", "예요", "두 명이에요"),
])
def test_particle_follows_last_sound(word, particle, expected):
    assert builtin.josa(word, particle) == expected


def test_tiny_model_loads_with_kobart_ids(tiny):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    assert (tiny / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = {t: tok.convert_tokens_to_ids(t) for t in builtin.SPECIAL_TOKENS}
    assert ids == {"<s>": 0, "</s>": 1, "<usr>": 2, "<pad>": 3, "<sys>": 4, "<unk>": 5, "<mask>": 6}
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 3, 5, 6)
    # the sample's tags are whole tokens, pretrained with the rest, but not special: the trainer marks them
    assert all(tok.tokenize(tag) == [tag] for tag in builtin.TAGS.values())
    assert not any(TAG.fullmatch(t) for t in tok.all_special_tokens)

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny, use_safetensors=True)
    c = model.config
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id, c.decoder_start_token_id) == (3, 0, 1, 1)
    assert c.vocab_size == len(tok) and c.max_position_embeddings == 1026
    g = model.generation_config
    assert (g.decoder_start_token_id, g.bos_token_id, g.eos_token_id, g.pad_token_id) == (1, 0, 1, 3)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_tokenizer_is_like_kobart(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    seen = builtin.examples("dev")[0]["summary"]
    unseen = "뷁 같은 낯선 글자도 바이트로 돌아온다. Hello!"
    for text in (seen, unseen):
        ids = tok(text)["input_ids"]
        assert ids[0] != tok.bos_token_id and ids[-1] != tok.eos_token_id  # adds no <s>/</s> itself
        assert tok.unk_token_id not in ids
        assert tok.decode(ids).split() == text.split()
    # with the tags added as special tokens (as the trainer does), "#Person1#은" comes back unspaced
    tok.add_special_tokens({"additional_special_tokens": ["#Person1#", "#Person2#"]})
    text = "#Person1#은 #Person2#에게 김치찌개를 주문한다."
    assert tok.decode(tok(text)["input_ids"]) == text


def test_pretrained_model_copies_and_infills_but_has_not_learnt_the_summaries(tiny):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from trainer.run.data import encode

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny, use_safetensors=True).eval()
    row = builtin.examples("dev")[0]  # held out of the pretraining corpus too
    dialogue, summary = (torch.tensor(encode(tok, [text], 512)) for text in (row["dialogue"], row["summary"]))

    def loss(x, y):
        with torch.no_grad():
            return model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss.item()

    ids = summary[0].tolist()  # two spans, of 3 and 2 tokens, each hidden behind one <mask>
    holes = torch.tensor([ids[:3] + [tok.mask_token_id] + ids[6:12] + [tok.mask_token_id] + ids[14:]])
    infilled, summarized = loss(holes, summary), loss(dialogue, summary)
    assert infilled < 0.5 * summarized  # fills the masked spans of an unseen summary
    assert summarized < 0.2 * math.log(len(tok))  # knows the words (random weights: about uniform)
    generated = model.generate(dialogue, attention_mask=torch.ones_like(dialogue), num_beams=1, max_length=30)
    start = rouge.clean_prediction(tok.decode(generated[0])).split()[:4]
    assert start == row["dialogue"].split()[:4], start  # untuned, it copies its input


def test_shipped_tiny_model_is_what_this_code_makes(tiny):
    tokenizer = pretrain.tiny_tokenizer()
    assert json.loads((tiny / "recipe.json").read_text()) == pretrain.recipe(tokenizer)
    from transformers import AutoTokenizer

    from trainer.run.data import tokenizer_fingerprint

    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny)) == tokenizer_fingerprint(tokenizer)


def test_pretraining_is_deterministic_and_moves_the_weights():
    tokenizer = pretrain.tiny_tokenizer()
    fresh, a, b = (pretrain.pretrain(tokenizer, steps).state_dict() for steps in (0, 2, 2))
    assert all(a[k].equal(b[k]) for k in a)
    assert not fresh["model.shared.weight"].equal(a["model.shared.weight"])
