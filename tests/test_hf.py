"""Language models from disk: ``--model hf:DIR`` (a folder saved by ``save_pretrained``) and ``--data
text:PATH`` (a corpus cut into blocks of tokens), with no network. A tiny Llama and a tiny GPT-2 (its
weights sharded) are built from small configs once per session, with a byte-level BPE tokenizer
trained here on a text written here, saved beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface import text
from distributed_surface.storage import read_surface
from helpers import assert_one_line_error

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

EOS = "<|endoftext|>"
SENTENCES = [
    "the landscape of a loss is a surface over the weights",
    "a small model walks down the valley of its loss",
    "filter normalised directions make two models comparable",
    "sharp minima and flat minima look different from above",
    "the quick brown fox jumps over the lazy dog again and again",
    "every rank evaluates its chunk of the grid and writes it once",
]
CORPUS = "\n".join(f"{s} ({i})." for i in range(40) for s in SENTENCES[i % 3 :: 2])  # a few KB
POSITIONS = 64
GRID = ["--x", "-1:1:3", "--no-plot", "--no-progress"]


def _train_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def _llama(vocab_size: int, **changes):
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config = transformers.LlamaConfig(vocab_size=vocab_size, max_position_embeddings=POSITIONS, **{**sizes, **changes})
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def lm(tmp_path_factory):
    """Model folders (``llama``; ``gpt2`` with sharded weights; ``small_vocab``: a Llama whose embedding
    is smaller than the tokenizer's vocabulary) and the corpus, in one session folder."""
    root = tmp_path_factory.mktemp("lm")
    tokenizer = _train_tokenizer()
    folders = {}
    folders["llama"] = root / "llama"
    _llama(len(tokenizer) + 20).save_pretrained(folders["llama"])
    torch.manual_seed(1)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=len(tokenizer) + 20, n_embd=32, n_layer=2, n_head=4, n_positions=POSITIONS,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    )
    folders["gpt2"] = root / "gpt2"
    gpt2.save_pretrained(folders["gpt2"], max_shard_size="30KB")
    folders["small_vocab"] = root / "small_vocab"
    _llama(len(tokenizer) - 40).save_pretrained(folders["small_vocab"])
    for folder in folders.values():
        tokenizer.save_pretrained(folder)
    (root / "corpus.txt").write_text(CORPUS)
    return {"root": root, "tokenizer": tokenizer, **folders}


def blocks_of(tokenizer, documents, seq_len=POSITIONS) -> torch.Tensor:
    """The blocks, cut independently: documents joined with eos, the partial block dropped."""
    ids = []
    for document in documents:
        if ids:
            ids.append(tokenizer.eos_token_id)
        ids += tokenizer(document, add_special_tokens=False)["input_ids"]
    count = len(ids) // seq_len
    return torch.tensor(ids[: count * seq_len]).reshape(count, seq_len)


def transformers_loss(folder, blocks) -> float:
    """``transformers``' own ``model(**batch).loss`` in float64, averaged over the blocks weighted by
    their counted tokens (every block counts seq_len - 1)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).double().eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in blocks.split(8):
            count = batch.shape[0] * (batch.shape[1] - 1)
            total += float(model(input_ids=batch, labels=batch).loss) * count
            tokens += count
    return total / tokens


def float64_loss(folder, blocks) -> float:
    """The token cross-entropy from the model's float64 logits, shifted by one, by hand."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).double().eval()
    with torch.no_grad():
        logits = model(input_ids=blocks).logits
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten(), reduction="mean"))


def theta0_loss(path) -> float:
    surface = read_surface(str(path))
    return float(surface.metrics["train_loss"][1])  # --x -1:1:3: θ0 is the centre


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the value at θ0 is transformers' own loss


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_theta0_equals_transformers_loss(lm, name, dsurf, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    rc, out, err = dsurf("run", "--model", f"hf:{lm[name]}", "--data", f"text:{corpus}", *GRID, "--out", "s.h5")
    assert rc == 0, err
    assert "from cache" not in err
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    value = theta0_loss(tmp_path / "s.h5")
    own, by_hand = transformers_loss(lm[name], blocks), float64_loss(lm[name], blocks)
    assert value == pytest.approx(own, rel=1e-6, abs=1e-7)
    assert value == pytest.approx(by_hand, rel=1e-6, abs=1e-7)
    surface = read_surface(str(tmp_path / "s.h5"))
    assert surface.config["hf_task"] == "causal-lm"  # from architectures
    assert surface.config["loss"] == "causal_lm"  # a causal LM's default
    assert surface.config["seq_len"] == POSITIONS  # the model's maximum positions
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["num_samples"] == len(blocks)
    # The second run reads the blocks from the cache, and gives the same value.
    rc, out, err = dsurf("run", "--model", f"hf:{lm[name]}", "--data", f"text:{corpus}", *GRID, "--out", "again.h5")
    assert rc == 0, err
    assert "dsurf: text blocks from cache" in err
    assert theta0_loss(tmp_path / "again.h5") == value


def test_weights_files_are_in_the_fingerprint(lm, dsurf, tmp_path):
    """The sharded GPT-2 loads; every shard's sha256 is recorded."""
    assert (lm["gpt2"] / "model.safetensors.index.json").is_file()
    shards = sorted(p.name for p in lm["gpt2"].glob("*.safetensors"))
    assert len(shards) > 1
    rc, out, err = dsurf("run", "--model", f"hf:{lm['gpt2']}", "--data", f"text:{lm['root'] / 'corpus.txt'}",
                         "--seq-len", "32", "--cache-dir", "cache", *GRID, "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    with h5py.File(tmp_path / "s.h5", "r") as f:
        recorded = json.loads(f.attrs["weights_sha256"])
    assert sorted(recorded) == shards
    assert recorded[shards[0]] == __import__("hashlib").sha256((lm["gpt2"] / shards[0]).read_bytes()).hexdigest()
    assert list((tmp_path / "cache").glob("corpus.txt.dsurf-blocks-*.npy"))  # cached where --cache-dir says


def test_test_split_from_a_jsonl_corpus(lm, dsurf, tmp_path):
    """--test-data text:PATH: a test split of blocks, whose value at θ0 is transformers' loss over them."""
    docs = SENTENCES * 8
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "held_out.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", "text:corpus.txt", "--test-data",
                         "text:held_out.jsonl", "--seq-len", "16", *GRID, "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    test_loss = float(read_surface(str(tmp_path / "s.h5")).metrics["test_loss"][1])
    blocks = blocks_of(lm["tokenizer"], docs, 16)
    assert test_loss == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)
    assert list(tmp_path.glob("held_out.jsonl.dsurf-blocks-*.npy"))  # cached beside the corpus


# ---------------------------------------------------------------- corpora: .jsonl and folders


def test_jsonl_and_folder_give_their_blocks(lm, tmp_path):
    tokenizer = lm["tokenizer"]
    docs = CORPUS.splitlines()
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": d, "n": i}) for i, d in enumerate(docs)) + "\n\n")
    reading = text.Reading(str(lm["llama"]), 16, "body")
    blocks = text.load_blocks(f"text:{tmp_path / 'c.jsonl'}", reading)
    assert torch.equal(blocks["input_ids"], blocks_of(tokenizer, docs, 16))
    assert torch.equal(blocks["labels"], blocks["input_ids"])
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(docs[1])
    (folder / "a.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n" + json.dumps({"text": docs[2]}) + "\n")
    (folder / "sub" / "c.txt").write_text(docs[3])
    (folder / "notes.md").write_text("not read")
    got = text.load_blocks(f"text:{folder}", text.Reading(str(lm["llama"]), 4))
    assert torch.equal(got["input_ids"], blocks_of(tokenizer, [docs[0], docs[2], docs[1], docs[3]], 4))


def test_cache_key_follows_the_tokenizer_config_not_the_model_config(lm, tmp_path):
    """tokenizer_config.json (the end-of-text token, ...) is the tokenizer's: a change to it is another
    key; the model's own config.json and weights are not the tokenizer's."""
    folder = tmp_path / "model"
    shutil.copytree(lm["llama"], folder)
    (tmp_path / "c.txt").write_text(CORPUS)
    root, files = text.corpus_files(f"text:{tmp_path / 'c.txt'}", "--data")
    reading = text.Reading(str(folder), 16)
    key = text.cache_key(root, files, folder, reading)
    config = folder / "config.json"
    config.write_text(config.read_text() + " ")
    assert text.cache_key(root, files, folder, reading) == key
    tokenizer_config = folder / "tokenizer_config.json"
    assert tokenizer_config.is_file()
    tokenizer_config.write_text(tokenizer_config.read_text() + " ")
    assert text.cache_key(root, files, folder, reading) != key


def test_unwritable_cache_tokenises_in_memory(lm, dsurf, tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "a_file").write_text("")
    args = ["run", "--model", f"hf:{lm['llama']}", "--data", "text:corpus.txt", "--seq-len", "32", *GRID]
    rc, out, err = dsurf(*args, "--cache-dir", "a_file/cache", "--out", "s.h5")
    assert rc == 0, err
    assert "warning: the text blocks cannot be cached" in err and "from cache" not in err
    rc, out, err = dsurf(*args, "--cache-dir", "a_file/cache", "--out", "t.h5")
    assert rc == 0 and "from cache" not in err


# ---------------------------------------------------------------- bad input: one line, no file changed


def _broken(lm, tmp_path, change) -> str:
    folder = tmp_path / "model"
    shutil.copytree(lm["llama"], folder)
    change(folder)
    return f"hf:{folder}"


def _edit_config(**changes):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return change


def _drop_weight(folder):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state.pop(sorted(k for k in state if "mlp" in k)[0])
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _wrong_shape(folder):
    _llama(340, intermediate_size=48).save_pretrained(folder / "other")
    shutil.move(folder / "other" / "model.safetensors", folder / "model.safetensors")
    shutil.rmtree(folder / "other")


BAD_MODELS = {
    "missing": (lambda lm, tmp: "hf:no/such/folder", ["no such folder", "nothing is downloaded"]),
    "no_config": (lambda lm, tmp: _broken(lm, tmp, lambda f: (f / "config.json").unlink()), ["no config.json"]),
    "unknown_type": (lambda lm, tmp: _broken(lm, tmp, _edit_config(model_type="nosuchmodel")), ["nosuchmodel"]),
    "no_architectures": (lambda lm, tmp: _broken(lm, tmp, _edit_config(architectures=None)), ["--hf-task"]),
    "no_weights": (lambda lm, tmp: _broken(lm, tmp, lambda f: (f / "model.safetensors").unlink()), ["no safetensors"]),
    "missing_weight": (lambda lm, tmp: _broken(lm, tmp, _drop_weight), ["missing", "mlp"]),
    "wrong_shape": (lambda lm, tmp: _broken(lm, tmp, _wrong_shape), ["shape"]),
    "remote_code": (
        lambda lm, tmp: _broken(lm, tmp, _edit_config(auto_map={"AutoModelForCausalLM": "x.Model"})), ["--trust-remote-code"]
    ),
    "vocabulary": (lambda lm, tmp: f"hf:{lm['small_vocab']}", ["vocabulary", "larger than the model's embedding"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_folder(case, lm, dsurf, tmp_path):
    make, needles = BAD_MODELS[case]
    model = make(lm, tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    before = snapshot(tmp_path)
    rc, out, err = dsurf("run", "--model", model, "--data", "text:corpus.txt", "--seq-len", "32", *GRID, "--out", "bad.h5")
    assert_one_line_error(rc, out, err, *needles)
    assert snapshot(tmp_path) == before


BAD_DATA = {
    "empty": ("text:c.txt", {"c.txt": ""}, [], ["holds no text"]),
    "short": ("text:c.txt", {"c.txt": "too short"}, [], ["shorter than one block"]),
    "no_files": ("text:d", {"d/notes.md": "x"}, [], ["no .txt or .jsonl"]),
    "not_json": ("text:c.jsonl", {"c.jsonl": '{"text": "a"}\n{oops\n'}, [], ["line 2", "not JSON"]),
    "no_field": ("text:c.jsonl", {"c.jsonl": '{"text": "a"}\n\n{"body": "b"}\n'}, [], ["line 3", "'text'"]),
    "seq_len": ("text:c.txt", {"c.txt": CORPUS}, ["--seq-len", "100"], ["maximum positions (64)"]),
    "task": ("text:c.txt", {"c.txt": CORPUS}, ["--hf-task", "sequence-classification"], ["causal language models"]),
    "missing": ("text:nothing.txt", {}, [], ["no such file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_corpus(case, lm, dsurf, tmp_path):
    data, files, flags, needles = BAD_DATA[case]
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    before = snapshot(tmp_path)
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", data, *flags, *GRID, "--out", "bad.h5")
    assert_one_line_error(rc, out, err, *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--seq-len", "8"], ["--seq-len needs --data text:"]),
        (["--hf-task", "causal-lm"], ["--hf-task needs --model hf:"]),
    ],
)
def test_text_flags_need_their_data(flags, needles, tiny, dsurf):
    rc, out, err = dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), *flags, *GRID)
    assert_one_line_error(rc, out, err, *needles)


def test_plain_run_does_not_import_transformers(tiny):
    code = (
        "import sys; from distributed_surface import cli\n"
        f"rc = cli.main(['run', '--model', {tiny.spec('model')!r}, '--data', {tiny.spec('data')!r}, '--x', '-1:1:2', "
        f"'--no-plot', '--no-progress', '--out', {str(tiny.path.parent / 'plain.h5')!r}])\n"
        "assert rc == 0, rc\nassert 'transformers' not in sys.modules and 'tokenizers' not in sys.modules\n"
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- under MPI


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_mpirun_equals_serial(lm, tmp_path):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=os.pathsep.join(sys.path))
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = [sys.executable, "-m", "distributed_surface", "run", "--model", f"hf:{lm['llama']}", "--data", "text:corpus.txt",
            "--x", "-1:1:5", "--chunk-size", "1", "--no-plot", "--no-progress"]  # fmt: skip
    serial = subprocess.run([*args, "--out", "serial.h5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", *args, "--out", "mpi.h5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mpi.returncode == 0, mpi.stderr
    assert mpi.stderr.count("text blocks from cache") == 1  # rank 0 read the blocks the serial run cached, and sent them
    assert "dsurf: tokenised" not in mpi.stderr
    a, b = read_surface(str(tmp_path / "serial.h5")), read_surface(str(tmp_path / "mpi.h5"))
    np.testing.assert_allclose(b.metrics["train_loss"], a.metrics["train_loss"], rtol=1e-7)
    assert set(b.timings["rank"]) == {0, 1}
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    assert b.metrics["train_loss"][2] == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_mpirun_with_an_unwritable_cache_tokenises_on_rank_0_only(lm, tmp_path):
    """The cache folder lies under a regular file (unwritable even for root): rank 0 tokenises in memory
    and sends the blocks; the other rank neither tokenises nor waits for a cache file."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=os.pathsep.join(sys.path))
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "a_file").write_text("")
    args = [sys.executable, "-m", "distributed_surface", "run", "--model", f"hf:{lm['llama']}", "--data", "text:corpus.txt",
            "--test-data", "text:corpus.txt", "--seq-len", "32", "--cache-dir", "a_file/sub", "--x", "-1:1:5",
            "--chunk-size", "1", "--no-plot", "--no-progress", "--out", "mpi.h5"]  # fmt: skip
    mpi = subprocess.run(["timeout", "120", "mpirun", "--oversubscribe", "-np", "2", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=150)  # fmt: skip
    assert mpi.returncode == 0, mpi.stderr
    assert mpi.stderr.count("dsurf: tokenised") == 2  # (rank 0: the train split, then the test split)
    assert mpi.stderr.count("cannot be cached") == 2 and "from cache" not in mpi.stderr
    surface = read_surface(str(tmp_path / "mpi.h5"))
    assert set(surface.timings["rank"]) == {0, 1}  # (rank 1 evaluated with the blocks it was sent)
    blocks = blocks_of(lm["tokenizer"], [CORPUS], seq_len=32)
    own = transformers_loss(lm["llama"], blocks)
    assert surface.metrics["train_loss"][2] == pytest.approx(own, rel=1e-6)
    assert surface.metrics["test_loss"][2] == pytest.approx(own, rel=1e-6)
    assert not (tmp_path / "a_file").is_dir()


# ---------------------------------------------------------------- --dtype: the weights' dtype in the forward pass


def bf16_loss(folder, blocks) -> float:
    """The token cross-entropy of the model cast to bfloat16 as a whole, its logits widened to fp32, by hand."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).to(torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(input_ids=blocks).logits.float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), blocks[:, 1:].flatten(), reduction="mean"))


def test_dtype_bf16_runs_the_forward_pass_in_bfloat16(lm, dsurf, tmp_path):
    corpus = lm["root"] / "corpus.txt"
    runs = {}
    for dtype in ("fp32", "bf16"):
        flags = [] if dtype == "fp32" else ["--dtype", dtype]
        rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", f"text:{corpus}", "--cache-dir", "cache",
                             *flags, *GRID, "--out", f"{dtype}.h5")  # fmt: skip
        assert rc == 0, err
        runs[dtype] = read_surface(str(tmp_path / f"{dtype}.h5"))
    assert runs["fp32"].config["dtype"] == "fp32" and runs["bf16"].config["dtype"] == "bf16"
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    fp32, bf16 = theta0_loss(tmp_path / "fp32.h5"), theta0_loss(tmp_path / "bf16.h5")
    assert fp32 == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)  # the default is unchanged
    # The model's bf16 forward pass (measured: 2e-10 relative), against a bf16-sized difference from fp32
    # (measured: 9e-6 relative, the loss of a freshly drawn model being near log(vocabulary)).
    assert bf16 == pytest.approx(bf16_loss(lm["llama"], blocks), rel=1e-8)
    assert 1e-6 < abs(bf16 - fp32) / fp32 < 1e-2
    # Away from θ0 too the values differ (each point is cast), and every one is finite.
    assert np.isfinite(runs["bf16"].metrics["train_loss"]).all()
    assert not np.array_equal(runs["bf16"].metrics["train_loss"], runs["fp32"].metrics["train_loss"])


def test_dtype_is_compared_on_resume(lm, dsurf, tmp_path):
    corpus = lm["root"] / "corpus.txt"
    common = ["--model", f"hf:{lm['llama']}", "--data", f"text:{corpus}", "--cache-dir", "cache", *GRID, "--out", "s.h5"]
    rc, out, err = dsurf("run", *common)
    assert rc == 0, err
    before = (tmp_path / "s.h5").read_bytes()
    rc, out, err = dsurf("run", *common, "--dtype", "bf16", "--resume")
    assert_one_line_error(rc, out, err, "dtype")
    assert (tmp_path / "s.h5").read_bytes() == before


# ---------------------------------------------------------------- model folders and adapters as checkpoints


@pytest.fixture(scope="session")
def tuned(lm):
    """``fine``: a copy of the Llama folder with every weight perturbed (a fine-tuned model); ``lora``: a
    LoRA adapter made with peft on the Llama as loaded from its folder, its lora_B non-zero; ``merged``:
    that adapter merged, saved as a model folder (transformers' own view of the adapted model)."""
    root = lm["root"] / "tuned"
    base = transformers.AutoModelForCausalLM.from_pretrained(lm["llama"], local_files_only=True)
    torch.manual_seed(2)
    fine = transformers.AutoModelForCausalLM.from_pretrained(lm["llama"], local_files_only=True)
    with torch.no_grad():
        for p in fine.parameters():
            p.add_(0.5 * torch.randn_like(p) * p.abs().mean())
    fine.save_pretrained(root / "fine")
    folders = {"fine": root / "fine"}
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn_like(p))
    adapted.save_pretrained(root / "lora")
    folders["lora"] = root / "lora"
    adapted.merge_and_unload().save_pretrained(root / "merged")
    folders["merged"] = root / "merged"
    return folders


def _line_to(lm, dsurf, to, *more):
    """``dsurf run --to TO`` from the Llama, at 0 and 1; the text blocks cached outside tmp_path (the note
    that they come from the cache is left out of stderr)."""
    corpus = lm["root"] / "corpus.txt"
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", f"text:{corpus}", "--cache-dir", lm["root"] / "cache",
                         "--to", str(to), "--x", "0:1:2", "--no-plot", "--no-progress", *more, "--out", "line.h5")  # fmt: skip
    return rc, out, "".join(line for line in err.splitlines(True) if not line.startswith("dsurf: text blocks from cache"))


def test_to_a_model_folder_goes_from_the_base_to_the_fine_tuned_model(lm, tuned, dsurf, tmp_path):
    shutil.copytree(tuned["fine"], tmp_path / "fine")
    rc, out, err = _line_to(lm, dsurf, tmp_path / "fine")
    assert rc == 0, err
    surface = read_surface(str(tmp_path / "line.h5"))
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    at_base, at_fine = surface.metrics["train_loss"]
    assert at_base == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)
    assert at_fine == pytest.approx(transformers_loss(tuned["fine"], blocks), rel=1e-6)
    assert at_fine != pytest.approx(at_base, rel=1e-4)
    sources = surface.frame["sources"]
    assert sources[0]["files"] == {"model.safetensors": hf_sha256(tuned["fine"] / "model.safetensors")}
    # --resume refuses the folder once its weights changed, and leaves the file as it was
    _renamed_weight(tmp_path / "fine", rename=False)
    before = (tmp_path / "line.h5").read_bytes()
    rc, out, err = _line_to(lm, dsurf, tmp_path / "fine", "--resume")
    assert_one_line_error(rc, out, err, "--resume", "fine", "another sha256")
    assert (tmp_path / "line.h5").read_bytes() == before


def hf_sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_to_a_lora_adapter_gives_the_merged_model(lm, tuned, dsurf, tmp_path):
    rc, out, err = _line_to(lm, dsurf, tuned["lora"])
    assert rc == 0, err
    assert "Warning" not in err  # (peft's and transformers' advice about their APIs is not printed)
    surface = read_surface(str(tmp_path / "line.h5"))
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    at_base, at_adapted = surface.metrics["train_loss"]
    assert at_base == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)
    assert at_adapted == pytest.approx(transformers_loss(tuned["merged"], blocks), rel=1e-6)
    assert at_adapted != pytest.approx(at_base, rel=1e-4)
    assert sorted(surface.frame["sources"][0]["files"]) == ["adapter_config.json", "adapter_model.safetensors"]


def _renamed_weight(folder, rename=True):
    """One q_proj weight renamed (or, ``rename=False``, changed) in the folder's safetensors file."""
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if n.endswith("q_proj.weight"))
    if rename:
        state[name.replace("q_proj", "query")] = state.pop(name)
    else:
        state[name] = state[name] + 1
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _other_base(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(folder.parent / "gpt2")
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "case, which, change, needles",
    [
        ("renamed weight", "fine", _renamed_weight, ["does not match the model", "missing", "q_proj", "unexpected", "query"]),
        ("no weights", "fine", lambda f: (f / "model.safetensors").unlink(), ["no safetensors weights"]),
        ("not a model folder", "fine", lambda f: (f / "config.json").unlink(), ["neither a model folder", "adapter"]),
        ("adapter of another base", "lora", _other_base, ["made for the model in", "other weights"]),
        ("adapter of other modules", "lora", None, ["does not fit the model"]),
    ],
)  # fmt: skip
def test_bad_folder_checkpoint(case, which, change, needles, lm, tuned, dsurf, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(tuned[which], folder)
    if change is not None:
        change(folder)
    else:  # an adapter of a GPT-2, whose modules the Llama does not have
        _gpt2_adapter(lm, folder)
    (tmp_path / "gpt2").symlink_to(lm["gpt2"])  # (the other base, beside the folder)
    before = snapshot(tmp_path)
    rc, out, err = _line_to(lm, dsurf, folder)
    assert_one_line_error(rc, out, err, *needles)
    assert snapshot(tmp_path) == before  # no file written or changed


def _gpt2_adapter(lm, folder):
    peft = pytest.importorskip("peft")
    shutil.rmtree(folder)
    gpt2 = transformers.AutoModelForCausalLM.from_pretrained(lm["gpt2"], local_files_only=True)
    peft.get_peft_model(gpt2, peft.LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None  # (the base is not checked: the modules are)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def test_adapter_without_peft_says_so(lm, tuned, dsurf, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_peft)
    rc, out, err = _line_to(lm, dsurf, tuned["lora"])
    assert_one_line_error(rc, out, err, "PEFT adapter folder", "needs peft")
    assert not (tmp_path / "line.h5").exists()


def test_to_a_sharded_folder_with_tied_weights(lm, dsurf, tmp_path):
    """GPT-2's folder holds its embedding once (lm_head is tied to it) in several shards: the line to a
    perturbed copy still ends at transformers' loss of that copy."""
    torch.manual_seed(3)
    fine = transformers.AutoModelForCausalLM.from_pretrained(lm["gpt2"], local_files_only=True)
    with torch.no_grad():
        for p in fine.parameters():
            p.add_(0.5 * torch.randn_like(p) * p.abs().mean())
    fine.save_pretrained(tmp_path / "gpt2_fine", max_shard_size="30KB")
    assert len(list((tmp_path / "gpt2_fine").glob("*.safetensors"))) > 1
    corpus = lm["root"] / "corpus.txt"
    rc, out, err = dsurf("run", "--model", f"hf:{lm['gpt2']}", "--data", f"text:{corpus}", "--cache-dir", lm["root"] / "cache",
                         "--to", tmp_path / "gpt2_fine", "--x", "0:1:2", "--no-plot", "--no-progress", "--out", "line.h5")  # fmt: skip
    assert rc == 0, err
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    at_base, at_fine = read_surface(str(tmp_path / "line.h5")).metrics["train_loss"]
    assert at_base == pytest.approx(transformers_loss(lm["gpt2"], blocks), rel=1e-6)
    assert at_fine == pytest.approx(transformers_loss(tmp_path / "gpt2_fine", blocks), rel=1e-6)
    assert at_fine != pytest.approx(at_base, rel=1e-4)


def test_plane_through_a_fine_tuned_folder_and_an_adapter(lm, tuned, dsurf, tmp_path):
    """--plane takes folders too: the fine-tuned model at (1, 0), the adapted one at (0, 1), each recorded."""
    corpus = lm["root"] / "corpus.txt"
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", f"text:{corpus}", "--cache-dir", lm["root"] / "cache",
                         "--plane", tuned["fine"], tuned["lora"], "--x", "0:1:2", "--y", "0:1:2", "--no-plot", "--no-progress",
                         "--out", "plane.h5")  # fmt: skip
    assert rc == 0, err
    surface = read_surface(str(tmp_path / "plane.h5"))
    loss = np.asarray(surface.metrics["train_loss"]).reshape(2, 2)  # [x index, y index]
    blocks = blocks_of(lm["tokenizer"], [CORPUS])
    base, fine, merged = (transformers_loss(f, blocks) for f in (lm["llama"], tuned["fine"], tuned["merged"]))
    assert loss[0, 0] == pytest.approx(base, rel=1e-6)
    assert loss[1, 0] == pytest.approx(fine, rel=1e-6)
    assert loss[0, 1] == pytest.approx(merged, rel=1e-6)
    assert [s["role"] for s in surface.frame["sources"]] == ["B", "C"]
    assert all(s["files"] for s in surface.frame["sources"])


# ---------------------------------------------------------------- --data hf-dataset: data sets saved by save_to_disk

datasets = pytest.importorskip("datasets")
NUM_LABELS = 3


@pytest.fixture(scope="session")
def classifier(lm):
    """``model``: a tiny BERT sequence classifier (3 classes) saved by save_pretrained, with the
    tokenizer; ``dd``: a DatasetDict (train, test) of its tokenised sentences, of unequal lengths, with
    a ``label`` column (ClassLabel); ``padded``: the train split padded by hand to equal length, with
    its attention_mask and token_type_ids and the targets under ``labels``."""
    root = lm["root"] / "classifier"
    tokenizer = lm["tokenizer"]
    torch.manual_seed(3)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=POSITIONS, num_labels=NUM_LABELS, pad_token_id=len(tokenizer) + 1,
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    sentences = [f"{s} ({i})" for i in range(6) for s in SENTENCES]
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    labels = [i % NUM_LABELS for i in range(len(ids))]
    features = datasets.Features(
        {"input_ids": datasets.Sequence(datasets.Value("int32")), "label": datasets.ClassLabel(num_classes=NUM_LABELS)}
    )
    rows = {"input_ids": ids, "label": labels}
    whole = datasets.Dataset.from_dict(rows, features=features)
    dd = datasets.DatasetDict(train=whole.select(range(24)), test=whole.select(range(24, 36)))
    dd.save_to_disk(root / "dd")
    width = max(map(len, ids[:24]))
    padded = datasets.Dataset.from_dict({
        "input_ids": [row + [0] * (width - len(row)) for row in ids[:24]],
        "attention_mask": [[1] * len(row) + [0] * (width - len(row)) for row in ids[:24]],
        "token_type_ids": [[0] * width for _ in ids[:24]],
        "labels": labels[:24],
        "idx": list(range(24)),  # (a column the model does not take: left out)
    })  # fmt: skip
    padded.save_to_disk(root / "padded")
    return {"model": root / "model", "dd": root / "dd", "padded": root / "padded", "ids": ids, "labels": labels}


def classifier_loss(folder, ids, labels) -> float:
    """``transformers``' own ``model(**batch).loss`` in float64, each sample alone and unpadded, averaged."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).double().eval()
    with torch.no_grad():
        losses = [float(model(input_ids=torch.tensor([row]), labels=torch.tensor([label])).loss) for row, label in zip(ids, labels)]
    return float(np.mean(losses))


def test_sequence_classifier_on_a_saved_dataset(classifier, dsurf, tmp_path):
    model, dd = classifier["model"], classifier["dd"]
    rc, out, err = dsurf("run", "--model", f"hf:{model}", "--data", f"hf-dataset:{dd / 'train'}",
                         "--test-data", f"hf-dataset:{dd / 'test'}", *GRID, "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    surface = read_surface(str(tmp_path / "s.h5"))
    ids, labels = classifier["ids"], classifier["labels"]
    # The ragged rows were padded (mask 0, the config's pad id): the loss is that of the rows unpadded.
    assert surface.metrics["train_loss"][1] == pytest.approx(classifier_loss(model, ids[:24], labels[:24]), rel=1e-6)
    assert surface.metrics["test_loss"][1] == pytest.approx(classifier_loss(model, ids[24:36], labels[24:36]), rel=1e-6)
    # The same rows padded by hand, with their own mask and token types, give the same surface.
    rc, out, err = dsurf("run", "--model", f"hf:{model}", "--data", f"hf-dataset:{classifier['padded']}", *GRID, "--out", "p.h5")
    assert rc == 0, err
    padded = read_surface(str(tmp_path / "p.h5"))
    np.testing.assert_allclose(padded.metrics["train_loss"], surface.metrics["train_loss"], rtol=1e-6)


def test_causal_lm_on_a_saved_text_column(lm, dsurf, tmp_path):
    documents = CORPUS.splitlines()
    datasets.Dataset.from_dict({"body": documents, "n": list(range(len(documents)))}).save_to_disk(tmp_path / "ds")
    args = ["run", "--model", f"hf:{lm['llama']}", "--data", "hf-dataset:ds", "--text-field", "body", *GRID]
    rc, out, err = dsurf(*args, "--out", "s.h5")
    assert rc == 0, err
    assert err.count("dsurf: tokenised") == 1 and "from cache" not in err
    blocks = blocks_of(lm["tokenizer"], documents)  # joined with eos, as a corpus's documents
    assert theta0_loss(tmp_path / "s.h5") == pytest.approx(transformers_loss(lm["llama"], blocks), rel=1e-6)
    rc, out, err = dsurf(*args, "--out", "t.h5")
    assert rc == 0 and "from cache" in err and "tokenised" not in err
    assert theta0_loss(tmp_path / "t.h5") == theta0_loss(tmp_path / "s.h5")


def _save(rows: dict):
    return lambda tmp: datasets.Dataset.from_dict(rows).save_to_disk(tmp / "ds")


BAD_DATASETS = {
    "missing": ("hf-dataset:nothing", None, ["no such folder"]),
    "not_a_dataset": ("hf-dataset:folder", lambda tmp: (tmp / "folder").mkdir(), ["not a folder saved by datasets"]),
    "no_column": ("hf-dataset:ds", _save({"body": ["a b c"]}), ["no column 'text'", "'body'"]),
    "dataset_dict": ("hf-dataset:dd", None, ["DatasetDict", "train, test", "dd/train"]),
    "ragged_labels": ("hf-dataset:ds", _save({"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3, 4]]}), ["row 1", "'labels'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_saved_dataset(case, lm, classifier, dsurf, tmp_path):
    data, make, needles = BAD_DATASETS[case]
    if case == "dataset_dict":
        shutil.copytree(classifier["dd"], tmp_path / "dd")
    elif make is not None:
        make(tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", data, *GRID, "--out", "bad.h5")
    assert_one_line_error(rc, out, err, *needles)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- dsurf info: perplexity of a token loss


def _measurement_line(info: str, name: str) -> str:
    return next(line for line in info.splitlines() if line.strip().startswith(f"{name} "))


def _perplexities(line: str) -> list[float]:
    import re

    return [float(v) for v in re.findall(r"perplexity ([0-9.e+-]+)\)", line)]


def test_info_shows_the_perplexity_of_a_token_loss(lm, dsurf, tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    rc, out, err = dsurf("run", "--model", f"hf:{lm['llama']}", "--data", "text:corpus.txt", "--test-data", "text:corpus.txt",
                         "--seq-len", "32", "--x", "-1:1:3", "--y", "-1:1:3", "--no-plot", "--no-progress", "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    rc, info, err = dsurf("info", "s.h5")
    assert rc == 0, err
    surface = read_surface(str(tmp_path / "s.h5"))
    for name in ("train_loss", "test_loss"):
        values = surface.metrics[name]
        line = _measurement_line(info, name)
        at_min, at_theta0 = _perplexities(line)
        assert at_min == pytest.approx(np.exp(values.min()), rel=1e-5)  # (printed to 6 digits)
        assert at_theta0 == pytest.approx(np.exp(values[1, 1]), rel=1e-5)
        assert f"at θ0 {values[1, 1]:.6g}" in line
    assert "perplexity" not in _measurement_line(info, "train_acc")


def test_info_shows_no_perplexity_for_other_losses(classifier, tiny, dsurf, tmp_path):
    rc, out, err = dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("regression_data"), "--loss", "mse",
                         *GRID, "--out", "mse.h5")  # fmt: skip
    assert rc == 0, err
    rc, out, err = dsurf("run", "--model", f"hf:{classifier['model']}", "--data", f"hf-dataset:{classifier['padded']}",
                         *GRID, "--out", "classifier.h5")  # fmt: skip
    assert rc == 0, err
    for path in ("mse.h5", "classifier.h5"):  # (a classifier's cross-entropy is not over tokens)
        rc, info, err = dsurf("info", path)
        assert rc == 0 and "train_loss" in info and "(perplexity" not in info, info  # (the tmp path says "perplexity")
