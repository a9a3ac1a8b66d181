"""Class embeddings: providers, config validation, the disk cache, shipped vector files, CLI hook.

Real libraries throughout: gensim trains a toy Word2Vec whose files are read back the way a
user's file would be; open_clip builds one tiny random text/image model, saved and reloaded
through the provider from a local checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split
from zeroseg.platform.data.registry import get_split
from zeroseg.platform.data.synthetic.vocabulary import synthetic_split
from zeroseg.platform.embeddings import (
    EmbeddingConfig,
    EmbeddingProvider,
    ProviderConfig,
    compute_class_embeddings,
    embed_command,
    file_fingerprint,
    get_class_embeddings,
    option,
    provider_names,
    register_provider,
    shipped_files,
    validate_embeddings,
)
from zeroseg.platform.embeddings import cache as cache_module
from zeroseg.platform.embeddings import providers as providers_module
from zeroseg.platform.embeddings.clip import DEFAULT_TEMPLATES, clean_class_name
from zeroseg.platform.errors import ConfigError, EmbeddingError


def make_split(names: list[str], *, ids: list[int] | None = None,
               png: list[int | None] | None = None, unseen: tuple[str, ...] = (),
               name: str = "test/hand") -> Split:
    ids = ids if ids is not None else list(range(1, len(names) + 1))
    png = png if png is not None else [i - 1 for i in ids]
    return Split(
        name=name, dataset="test", tasks=("semantic",), protocol=PROTOCOL_DROP_IMAGES,
        classes=tuple(
            ClassInfo(index=i, id=ids[i], name=n, isthing=True, unseen=n in unseen,
                      png_label=png[i])
            for i, n in enumerate(names)
        ),
    )


def cosine(matrix: np.ndarray) -> np.ndarray:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit @ unit.T


def nearest(matrix: np.ndarray, split: Split, name: str) -> str:
    sims = cosine(matrix)[split.by_name(name).index]
    sims[split.by_name(name).index] = -np.inf
    return split.classes[int(sims.argmax())].name


# -- configs and the registry -------------------------------------------------------------------

def test_builtin_providers_are_registered() -> None:
    assert {"attributes", "word2vec", "file", "clip"} <= set(provider_names())
    with pytest.raises(ConfigError, match=r"unknown provider 'glove' \(known: .*attributes"):
        EmbeddingConfig.from_dict({"provider": "glove"})
    with pytest.raises(ConfigError, match="embeddings.provider: required key is missing"):
        EmbeddingConfig.from_dict({"dim": 3})


@pytest.mark.parametrize(("config", "message"), [
    ({"provider": "attributes", "dimm": 8},
     r"embeddings.attributes: unknown key 'dimm' \(known keys: dim, keys, noise, noise_seed, "
     r"normalize, seed, thing_flag\)"),
    ({"provider": "attributes", "dim": "64"},
     r"embeddings.attributes.dim: expected an integer, got str '64'"),
    ({"provider": "attributes", "dim": True}, r"embeddings.attributes.dim: expected an integer"),
    ({"provider": "attributes", "dim": 0}, r"embeddings.attributes.dim: expected a value >= 1"),
    ({"provider": "attributes", "noise": "high"},
     r"embeddings.attributes.noise: expected a number"),
    ({"provider": "attributes", "normalize": 1}, r"embeddings.attributes.normalize: expected true"),
    ({"provider": "attributes", "keys": "colour"}, r"embeddings.attributes.keys: expected a list"),
    ({"provider": "word2vec"}, r"embeddings.word2vec.path: required key is missing"),
    ({"provider": "word2vec", "path": "v.bin", "aliases": {"cat": 3}},
     r"embeddings.word2vec.aliases\['cat'\]: expected a string, got int 3"),
    ({"provider": "word2vec", "path": "vectors.dat"},
     r"embeddings.word2vec.format: cannot tell the format of vectors.dat"),
    ({"provider": "word2vec", "path": "v.bin", "format": "glove"},
     r"embeddings.word2vec.format: 'glove' is not one of auto, binary, text, kv"),
    ({"provider": "file"}, r"embeddings.file: set exactly one of 'name' .*cocostuff_word2vec"),
    ({"provider": "file", "name": "x", "path": "y"}, r"embeddings.file: set exactly one"),
    ({"provider": "file", "name": "glove_coco"},
     r"embeddings.file.name: unknown shipped file 'glove_coco' \(known: coco2014_w2v_withbg"),
    ({"provider": "file", "path": "v.csv"}, r"embeddings.file.layout: required with 'path'"),
    ({"provider": "file", "path": "v.csv", "layout": "rows"},
     r"embeddings.file.layout: 'rows' is not one of rows_by_png_label"),
    ({"provider": "file", "name": "voc12_word2vec", "layout": "rows_by_id"},
     r"embeddings.file.layout: a shipped file \(voc12_word2vec\) has its own layout"),
    ({"provider": "file", "path": "v.csv", "layout": "rows_by_id", "ids": [1, 2]},
     r"embeddings.file.ids: only used with the \*_in_split_order layouts"),
    ({"provider": "clip"}, r"embeddings.clip.checkpoint: required key is missing"),
    ({"provider": "clip", "checkpoint": "c.pt", "templates": ["a photo"]},
     r"embeddings.clip.templates\[0\]: 'a photo' must contain exactly one"),
    ({"provider": "clip", "checkpoint": "c.pt", "model": "hf-hub:org/model"},
     r"embeddings.clip.model: 'hf-hub:org/model' uses a hub"),
    ({"provider": "clip", "checkpoint": "c.pt", "device": "cuda", "devices": 2},
     r"embeddings.clip: unknown key 'devices'"),
])
def test_config_errors_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmbeddingConfig.from_dict(config)


def test_config_round_trip_and_key_fields() -> None:
    cfg = EmbeddingConfig.from_dict({"provider": "clip", "checkpoint": Path("/m/c.pt"),
                                     "device": "cuda:1", "aliases": {"b": "x", "a": "y"}})
    assert cfg.to_dict()["checkpoint"] == "/m/c.pt"
    assert cfg.to_dict()["templates"] == list(DEFAULT_TEMPLATES)
    assert EmbeddingConfig.from_dict(cfg.to_dict()) == cfg
    key = cfg.options.key_dict()
    assert "device" not in key and "batch_size" not in key  # do not change the vectors
    assert key["aliases"] == {"a": "y", "b": "x"}
    assert EmbeddingConfig.coerce(cfg) is cfg


def test_configs_are_hashable_values() -> None:
    a = EmbeddingConfig.from_dict({"provider": "word2vec", "path": "v.bin",
                                   "aliases": {"tv": "television"}})
    b = EmbeddingConfig.from_dict({"provider": "word2vec", "path": "v.bin",
                                   "aliases": {"tv": "television"}})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != EmbeddingConfig.from_dict({"provider": "word2vec", "path": "v.bin"})


def test_importing_embeddings_loads_no_heavy_library() -> None:
    code = ("import sys, zeroseg.platform.embeddings; "
            "print(sorted(m for m in ('torch', 'gensim', 'open_clip', 'torchvision') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- a plug-in provider -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _LengthConfig(ProviderConfig):
    scale: float = option(1.0, minimum=0.0, doc="multiplier")


class _LengthProvider(EmbeddingProvider):
    """Test plug-in: [len(name) * scale, 1]."""

    name = "test-length"
    config_class = _LengthConfig
    calls = 0

    def embed(self, split: Split) -> np.ndarray:
        type(self).calls += 1
        scale = self.config.scale  # type: ignore[attr-defined]
        return np.array([[len(c.name) * scale, 1.0] for c in split.classes])


@pytest.fixture
def length_provider():
    register_provider(_LengthProvider)
    _LengthProvider.calls = 0
    yield _LengthProvider
    providers_module._PROVIDERS.pop(_LengthProvider.name, None)


def test_plugin_provider_is_selected_by_name_and_cached(length_provider, tmp_path: Path) -> None:
    split = make_split(["cat", "horse"])
    cfg = {"provider": "test-length", "scale": 2}
    matrix = get_class_embeddings(split, cfg, tmp_path)
    assert matrix.dtype == np.float32 and matrix.tolist() == [[6.0, 1.0], [10.0, 1.0]]
    assert get_class_embeddings(split, cfg, tmp_path).tolist() == matrix.tolist()
    assert length_provider.calls == 1  # second call came from the cache
    get_class_embeddings(split, {"provider": "test-length", "scale": 3}, tmp_path)
    get_class_embeddings(make_split(["horse", "cat"]), cfg, tmp_path)  # class order is in the key
    assert length_provider.calls == 3
    assert len(list(tmp_path.glob("test-length-*.npy"))) == 3
    with pytest.raises(ConfigError, match="embeddings.test-length: unknown key 'size'"):
        get_class_embeddings(split, {"provider": "test-length", "size": 1}, tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        register_provider(type("Other", (_LengthProvider,), {}))


# -- validation ---------------------------------------------------------------------------------

def test_validate_embeddings_rejects_bad_matrices() -> None:
    split = make_split(["cat", "dog", "cow"])
    good = np.arange(6, dtype=np.float64).reshape(3, 2) + 1
    out = validate_embeddings(good, split, "vec.txt")
    assert out.dtype == np.float32 and out.flags.c_contiguous and np.array_equal(out, good)
    with pytest.raises(EmbeddingError, match=r"vec.txt: embeddings have shape \[2, 2\]; expected "
                                             r"\[3, dim\] for split test/hand"):
        validate_embeddings(good[:2], split, "vec.txt")
    with pytest.raises(EmbeddingError, match="shape"):
        validate_embeddings(good[:, :0], split, "vec.txt")
    nan = good.copy()
    nan[1, 0] = np.nan
    nan[2, 1] = np.inf
    with pytest.raises(EmbeddingError, match=r"vec.txt: non-finite values \(NaN/inf\) in the "
                                             r"vector of class 'dog' \(and 1 more\)"):
        validate_embeddings(nan, split, "vec.txt")
    with pytest.raises(EmbeddingError, match="non-finite"):  # overflows float32
        validate_embeddings(good * 1e300, split, "vec.txt")
    zero = good.copy()
    zero[2] = 0
    with pytest.raises(EmbeddingError, match="vec.txt: the vector of class 'cow' is all zeros"):
        validate_embeddings(zero, split, "vec.txt")


# -- attributes ---------------------------------------------------------------------------------

def test_attribute_embeddings_are_fixed_and_compositional() -> None:
    split = synthetic_split()
    matrix = get_class_embeddings(split, {"provider": "attributes"}, None)
    assert matrix.shape == (32, 64) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)
    # the same class gets the same vector in another split (here: the validation view)
    val = split.validation_view()
    val_matrix = get_class_embeddings(val, {"provider": "attributes"}, None)
    for c in val.classes:
        np.testing.assert_array_equal(val_matrix[c.index], matrix[split.by_name(c.name).index])
    # every unseen class is closest to a seen class sharing one of its attribute values
    sims = cosine(matrix)
    seen = [c for c in split.classes if not c.unseen]
    for c in split.unseen:
        best = max(seen, key=lambda s: sims[c.index, s.index])
        shared = set(c.attributes.items()) & set(best.attributes.items())
        assert shared - {("position", "top"), ("position", "bottom")}, (c.name, best.name)
    # a fixed projection: changes only with the seed
    again = get_class_embeddings(split, {"provider": "attributes", "seed": 1729}, None)
    np.testing.assert_array_equal(again, matrix)
    other = get_class_embeddings(split, {"provider": "attributes", "seed": 7}, None)
    assert not np.allclose(other, matrix)
    raw = get_class_embeddings(split, {"provider": "attributes", "normalize": False, "dim": 16},
                               None)
    assert raw.shape == (32, 16) and np.ptp(np.linalg.norm(raw, axis=1)) > 0.01


def test_attribute_noise_is_seeded_and_scaled() -> None:
    split = synthetic_split()
    clean = get_class_embeddings(split, {"provider": "attributes", "dim": 256}, None)
    noisy = get_class_embeddings(split, {"provider": "attributes", "dim": 256, "noise": 0.5},
                                 None)
    same = get_class_embeddings(split, {"provider": "attributes", "dim": 256, "noise": 0.5},
                                None)
    other = get_class_embeddings(split, {"provider": "attributes", "dim": 256, "noise": 0.5,
                                         "noise_seed": 1}, None)
    np.testing.assert_array_equal(noisy, same)
    assert not np.allclose(noisy, other)
    agreement = np.sum(clean * noisy, axis=1)  # unit rows: cosine
    # a perturbation of norm 0.5 (relative) gives cos ~ 1 / sqrt(1 + 0.25) = 0.894
    assert 0.85 < agreement.mean() < 0.94, agreement.mean()
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, atol=1e-6)


def test_attribute_provider_needs_attributes() -> None:
    with pytest.raises(EmbeddingError, match="class 'cat' of split test/hand has no attributes"):
        get_class_embeddings(make_split(["cat"]), {"provider": "attributes"}, None)
    with pytest.raises(ConfigError, match="keys: 'size' is not an attribute of any class"):
        get_class_embeddings(synthetic_split(), {"provider": "attributes", "keys": ["size"]}, None)
    with pytest.raises(EmbeddingError, match="class 'smooth sky' .* has no attributes"):
        get_class_embeddings(synthetic_split(), {"provider": "attributes", "keys": ["shape"]},
                             None)  # stuff classes have no shape
    only_shape = get_class_embeddings(synthetic_split(), {"provider": "attributes",
                                                          "keys": ["shape", "texture"]}, None)
    split = synthetic_split()
    np.testing.assert_array_equal(only_shape[split.by_name("red star").index],
                                  only_shape[split.by_name("blue star").index])


# -- the cache ----------------------------------------------------------------------------------

def test_cache_sidecar_and_rebuild_on_mismatch(tmp_path: Path) -> None:
    split = synthetic_split()
    cfg = {"provider": "attributes", "noise": 0.1}
    first = compute_class_embeddings(split, cfg, tmp_path)
    assert first.cache_status == "built" and first.cache_path is not None
    npy, meta_path = first.cache_path, first.cache_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    assert meta["provider"] == "attributes" and meta["split"] == "synthetic/default"
    assert meta["classes"] == split.names and meta["dim"] == 64 and meta["shape"] == [32, 64]
    assert meta["config"]["noise"] == 0.1 and meta["config"]["seed"] == 1729
    assert meta["created_by"]["zeroseg"] and meta["created_by"]["numpy"] == np.__version__
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob(".*.tmp"))

    second = compute_class_embeddings(split, cfg, tmp_path)
    assert second.cache_status == "hit"
    np.testing.assert_array_equal(second.matrix, first.matrix)

    # a tampered array is noticed and rebuilt
    tampered = first.matrix.copy()
    tampered[0, 0] += 1
    np.save(npy, tampered)
    third = compute_class_embeddings(split, cfg, tmp_path)
    assert third.cache_status == "built" and "recorded hash" in third.cache_reason
    np.testing.assert_array_equal(third.matrix, first.matrix)
    np.testing.assert_array_equal(np.load(npy), first.matrix)

    # recorded inputs that differ from the current ones: rebuilt, never reused
    meta = json.loads(meta_path.read_text())
    meta["inputs"] = {"vectors": {"size": 1, "sha256": "0" * 64}}
    meta_path.write_text(json.dumps(meta))
    fourth = compute_class_embeddings(split, cfg, tmp_path)
    assert fourth.cache_status == "built" and "input file changed: vectors" in fourth.cache_reason

    meta_path.write_text("{not json")
    fifth = compute_class_embeddings(split, cfg, tmp_path)
    assert fifth.cache_status == "built" and "unreadable" in fifth.cache_reason
    assert compute_class_embeddings(split, cfg, tmp_path).cache_status == "hit"
    assert compute_class_embeddings(split, cfg, None).cache_status == "disabled"


def test_file_fingerprint_follows_content(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    before = file_fingerprint(path)
    assert before == {"size": 1000, "sha256": before["sha256"]}
    path.write_bytes(b"a" * 999 + b"b")  # same size, new content
    assert file_fingerprint(path)["sha256"] != before["sha256"]
    with pytest.raises(EmbeddingError, match="does not exist"):
        file_fingerprint(tmp_path / "missing.bin")

    # large files: sampled content plus size and mtime
    monkeypatch.setattr(cache_module, "FULL_HASH_LIMIT", 100)
    monkeypatch.setattr(cache_module, "_EDGE_BYTES", 64)
    monkeypatch.setattr(cache_module, "_SAMPLE_BYTES", 16)
    monkeypatch.setattr(cache_module, "_SAMPLES", 8)
    data = bytearray(os.urandom(4096))
    path.write_bytes(bytes(data))
    large = file_fingerprint(path)
    assert set(large) == {"size", "mtime_ns", "sampled_sha256"}
    stat = path.stat()
    data[10] ^= 0xFF  # inside the head sample; restore mtime so only the content differs
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(path)["sampled_sha256"] != large["sampled_sha256"]


# -- word2vec (gensim) ----------------------------------------------------------------------------

TOY_CORPUS = [
    "the cat chased the dog across the road".split(),
    "a dog and a cat sat under the tree".split(),
    "the traffic light turned red near the fire hydrant".split(),
    "grass grows by the road and the tree".split(),
    "the sky above the grass was blue".split(),
] * 20
W2V_CLASSES = ["cat", "Dog", "traffic light", "fire-hydrant", "tree/grass_road"]


def _train_word2vec(seed: int) -> Any:
    from gensim.models import Word2Vec

    return Word2Vec(TOY_CORPUS, vector_size=12, window=3, min_count=1, seed=seed, workers=1,
                    epochs=5).wv


@pytest.fixture(scope="module")
def w2v_files(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("w2v")
    kv = _train_word2vec(seed=1)
    kv.save_word2vec_format(str(root / "toy.bin"), binary=True)
    kv.save_word2vec_format(str(root / "toy.txt"), binary=False)
    kv.save(str(root / "toy.kv"))
    return {"kv": kv, "bin": root / "toy.bin", "txt": root / "toy.txt", "kv_path": root / "toy.kv"}


def _expected_w2v(kv: Any) -> np.ndarray:
    return np.stack([
        kv["cat"], kv["dog"], (kv["traffic"] + kv["light"]) / 2,
        (kv["fire"] + kv["hydrant"]) / 2, (kv["tree"] + kv["grass"] + kv["road"]) / 3,
    ])


@pytest.mark.parametrize("kind", ["bin", "txt"])
def test_word2vec_files_load_like_a_users_file(w2v_files, kind: str) -> None:
    split = make_split(W2V_CLASSES)
    matrix = get_class_embeddings(split, {"provider": "word2vec", "path": w2v_files[kind]}, None)
    assert matrix.shape == (5, 12) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, _expected_w2v(w2v_files["kv"]), rtol=1e-5, atol=1e-6)
    unit = get_class_embeddings(split, {"provider": "word2vec", "path": w2v_files[kind],
                                        "normalize": True}, None)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_word2vec_aliases_and_missing_words(w2v_files) -> None:
    path = str(w2v_files["bin"])
    kv = w2v_files["kv"]
    split = make_split(["cat", "teddy bear"])
    matrix = get_class_embeddings(split, {"provider": "word2vec", "path": path,
                                          "aliases": {"teddy bear": "dog"}}, None)
    np.testing.assert_allclose(matrix[1], kv["dog"], rtol=1e-6)
    with pytest.raises(EmbeddingError, match=rf"word2vec file {path}: no vector for word 'teddy' "
                                             r"of class 'teddy bear'; also missing: 'bear'"):
        get_class_embeddings(split, {"provider": "word2vec", "path": path}, None)
    with pytest.raises(EmbeddingError, match="no vector for word 'Dog' of class 'Dog'"):
        get_class_embeddings(make_split(["Dog"]), {"provider": "word2vec", "path": path,
                                                   "lowercase_fallback": False}, None)


def test_word2vec_native_kv_needs_allow_pickle(w2v_files) -> None:
    split = make_split(W2V_CLASSES)
    cfg = {"provider": "word2vec", "path": str(w2v_files["kv_path"])}
    with pytest.raises(EmbeddingError, match=r"toy.kv: gensim's .kv format is a pickle"):
        get_class_embeddings(split, cfg, None)
    matrix = get_class_embeddings(split, {**cfg, "allow_pickle": True}, None)
    np.testing.assert_allclose(matrix, _expected_w2v(w2v_files["kv"]), rtol=1e-6)


def test_word2vec_unreadable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"not a word2vec file\n\x00\x01")
    with pytest.raises(EmbeddingError, match=rf"word2vec file {bad}: cannot read it as binary"):
        get_class_embeddings(make_split(["cat"]), {"provider": "word2vec", "path": bad}, None)
    with pytest.raises(EmbeddingError, match=r"word2vec: vectors file .*nope.bin does not exist"):
        get_class_embeddings(make_split(["cat"]),
                             {"provider": "word2vec", "path": tmp_path / "nope.bin"}, None)


def test_word2vec_cache_rebuilds_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "vectors.bin"
    split = make_split(W2V_CLASSES)
    cfg = {"provider": "word2vec", "path": str(path)}
    first_kv = _train_word2vec(seed=1)
    first_kv.save_word2vec_format(str(path), binary=True)
    built = compute_class_embeddings(split, cfg, tmp_path / "cache")
    hit = compute_class_embeddings(split, cfg, tmp_path / "cache")
    assert (built.cache_status, hit.cache_status) == ("built", "hit")
    second_kv = _train_word2vec(seed=2)
    second_kv.save_word2vec_format(str(path), binary=True)
    rebuilt = compute_class_embeddings(split, cfg, tmp_path / "cache")
    assert rebuilt.cache_status == "built" and "vectors" in rebuilt.cache_reason
    np.testing.assert_allclose(rebuilt.matrix, _expected_w2v(second_kv), rtol=1e-5, atol=1e-6)
    assert not np.allclose(rebuilt.matrix, built.matrix)
    assert rebuilt.cache_path == built.cache_path  # same slot, rewritten
    meta = json.loads(rebuilt.cache_path.with_suffix(".json").read_text())
    assert meta["inputs"]["vectors"]["size"] == path.stat().st_size
    assert meta["created_by"]["gensim"]


# -- shipped per-class vector files -------------------------------------------------------------

VECTORS_DIR = Path(shipped_files()["voc12_word2vec"].path).parent

# (shipped file, split, expected nearest neighbours, class whose raw row/column is checked,
#  how to find that row in the raw file)
SHIPPED_CASES = [
    ("cocostuff_word2vec", "coco-stuff/spnet-156-15",
     {"cat": "dog", "cow": "sheep", "fork": "spoon"}, "cat", ("row", 16)),
    ("cocostuff_fasttext", "coco-stuff/cap2seg-15",
     {"cat": "dog", "cow": "sheep", "fork": "spoon"}, "cow", ("row", 20)),
    ("voc12_word2vec", "voc12/spnet-15-5", {"cat": "dog", "cow": "sheep"}, "cat", ("row", 8)),
    ("voc12_fasttext", "voc12/zs3-10", {"cat": "dog", "cow": "sheep"}, "cow", ("row", 10)),
    ("voc12_zs3_w2c", "voc12/zs3-2", {"cat": "dog", "cow": "sheep"}, "sheep", ("row", 17)),
    ("pascal_context_zs3_w2c", "pascal-context/zs3-10",
     {"cat": "dog", "cow": "sheep", "keyboard": "mouse"}, "keyboard", ("row", 38)),
    ("coco2014_w2v_withbg_48_17", "coco2014/zsi-48-17",
     {"cat": "dog", "cow": "sheep", "fork": "spoon"}, "cat", ("column", "w2v_column")),
    ("coco2014_w2v_withbg_65_15", "coco2014/zsi-65-15",
     {"cat": "dog", "cow": "sheep", "fork": "spoon"}, "fork", ("column", "w2v_column")),
]


@pytest.mark.parametrize(("name", "split_name", "neighbours", "probe", "where"), SHIPPED_CASES,
                         ids=[c[0] for c in SHIPPED_CASES])
def test_shipped_files_map_rows_to_classes(name, split_name, neighbours, probe, where) -> None:
    split = get_split(split_name)
    shipped = shipped_files()[name]
    assert split_name in shipped.splits
    matrix = get_class_embeddings(split, {"provider": "file", "name": name}, None)
    assert matrix.shape == (split.num_classes, 300)
    for query, expected in neighbours.items():
        assert nearest(matrix, split, query) == expected, (name, query)
    # the probed class's vector is exactly the raw file's row/column
    raw = np.loadtxt(shipped.path, delimiter=",")
    info = split.by_name(probe)
    kind, index = where
    if kind == "row":
        np.testing.assert_allclose(matrix[info.index], raw[index], rtol=1e-6)
    else:  # the registry records the column independently of the manifest
        np.testing.assert_allclose(matrix[info.index], raw[:, info.extra[index]], rtol=1e-6)


def test_every_shipped_file_fits_every_split_it_lists(caplog) -> None:
    caplog.set_level("WARNING", logger="zeroseg")
    for name, shipped in shipped_files().items():
        for split_name in shipped.splits:
            split = get_split(split_name)
            matrix = get_class_embeddings(split, {"provider": "file", "name": name}, None)
            assert matrix.shape == (split.num_classes, shipped.dim), (name, split_name)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_shipped_column_file_follows_category_ids() -> None:
    split = get_split("coco2014/zsi-48-17")
    full = get_class_embeddings(split, {"provider": "file", "name": "coco2014_w2v_withbg_48_17"},
                                None)
    val = split.validation_view()  # unseen classes removed, indices shift
    sub = get_class_embeddings(val, {"provider": "file", "name": "coco2014_w2v_withbg_48_17"},
                               None)
    for c in val.classes:
        np.testing.assert_array_equal(sub[c.index], full[split.by_name(c.name).index])
    # the 65/15 split has classes the 48/17 file lacks
    with pytest.raises(EmbeddingError, match=r"15 classes of split coco2014/zsi-65-15 are not "
                                             r"among the file's 65 class ids \(first: 'traffic "
                                             r"light', id 10\)"):
        get_class_embeddings(get_split("coco2014/zsi-65-15"),
                             {"provider": "file", "name": "coco2014_w2v_withbg_48_17"}, None)


def test_shipped_file_with_the_wrong_split_is_refused() -> None:
    with pytest.raises(EmbeddingError, match=r"cocostuff_word2vec.csv: 20 of 20 class names of "
                                             r"split voc12/spnet-15-5 differ"):
        get_class_embeddings(get_split("voc12/spnet-15-5"),
                             {"provider": "file", "name": "cocostuff_word2vec"}, None)


def test_shipped_files_are_documented() -> None:
    sources = (VECTORS_DIR / "SOURCES.md").read_text()
    for name, shipped in shipped_files().items():
        assert shipped.path.is_file(), name
        assert shipped.path.name.split(".")[0].split("_")[0] in sources
        assert shipped.source["commit"] in sources
        assert len(shipped.names) == shipped.vectors + (shipped.layout.endswith("background"))


def _write(path: Path, rows: list[list[float]] | np.ndarray, sep: str = ",") -> Path:
    path.write_text("\n".join(sep.join(repr(float(v)) for v in row) for row in rows) + "\n")
    return path


def test_user_file_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 4))
    split = make_split(["a", "b", "c"], ids=[5, 1, 3], png=[4, 0, 2])
    path = _write(tmp_path / "v.csv", table)
    by_id = get_class_embeddings(split, {"provider": "file", "path": path,
                                         "layout": "rows_by_id"}, None)
    np.testing.assert_allclose(by_id, table[[5, 1, 3]], rtol=1e-6)
    by_png = get_class_embeddings(split, {"provider": "file", "path": path,
                                          "layout": "rows_by_png_label"}, None)
    np.testing.assert_allclose(by_png, table[[4, 0, 2]], rtol=1e-6)
    first3 = _write(tmp_path / "three.txt", table[:3], sep=" ")
    in_order = get_class_embeddings(split, {"provider": "file", "path": first3,
                                            "layout": "rows_in_split_order",
                                            "delimiter": None}, None)
    np.testing.assert_allclose(in_order, table[:3], rtol=1e-6)
    columns = _write(tmp_path / "cols.csv", table[:4].T)  # background + 3 classes as columns
    with_bg = get_class_embeddings(split, {"provider": "file", "path": columns,
                                           "layout": "columns_in_split_order_with_background"},
                                   None)
    np.testing.assert_allclose(with_bg, table[1:4], rtol=1e-6)
    by_ids = get_class_embeddings(split, {"provider": "file", "path": columns,
                                          "layout": "columns_in_split_order_with_background",
                                          "ids": [3, 1, 5]}, None)
    np.testing.assert_allclose(by_ids, table[[3, 2, 1]], rtol=1e-6)
    npy = tmp_path / "v.npy"
    np.save(npy, table[:3].astype(np.float32))
    from_npy = get_class_embeddings(split, {"provider": "file", "path": npy,
                                            "layout": "rows_in_split_order", "dim": 4}, None)
    np.testing.assert_allclose(from_npy, table[:3], rtol=1e-6)


def test_bad_user_files_name_the_file_and_the_expectation(tmp_path: Path) -> None:
    split = make_split(["a", "b", "c"], ids=[0, 1, 2], png=[0, 1, 2])
    rng = np.random.default_rng(1)

    def load(path: Path, **extra: Any) -> np.ndarray:
        cfg = {"provider": "file", "path": str(path), "layout": "rows_by_id", **extra}
        return get_class_embeddings(split, cfg, None)

    narrow = _write(tmp_path / "narrow.csv", rng.standard_normal((3, 299)))
    with pytest.raises(EmbeddingError, match=r"narrow.csv: 299 columns per vector; expected dim "
                                             r"300"):
        load(narrow, dim=300)
    short = _write(tmp_path / "short.csv", rng.standard_normal((2, 5)))
    with pytest.raises(EmbeddingError, match=r"short.csv: 2 rows, but class 'c' needs row 2 "
                                             r"\(id\); expected at least 3 rows for split"):
        load(short)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(EmbeddingError, match=r"ragged.csv, line 3: 2 values; expected 3 like "
                                             r"line 1"):
        load(ragged)
    nan = tmp_path / "nan.csv"
    nan.write_text("1,2,3\n4,nan,6\n7,8,9\n")
    with pytest.raises(EmbeddingError, match=r"nan.csv, line 2, column 2: non-finite value nan"):
        load(nan)
    header = tmp_path / "header.csv"
    header.write_text("name,x,y\n1,2,3\n")
    with pytest.raises(EmbeddingError, match=r"header.csv, line 1, column 1: 'name' is not a "
                                             r"number"):
        load(header)
    zero = _write(tmp_path / "zero.csv", [[1, 2], [0, 0], [3, 4]])
    with pytest.raises(EmbeddingError, match=r"zero.csv: the vector of class 'b' is all zeros"):
        load(zero)
    cols = _write(tmp_path / "cols.csv", rng.standard_normal((5, 3)))  # bg + 2 columns, 3 classes
    with pytest.raises(EmbeddingError, match=r"cols.csv: 2 class columns after the background; "
                                             r"layout columns_in_split_order_with_background "
                                             r"expects one per class of split test/hand \(3\)"):
        load(cols, layout="columns_in_split_order_with_background")
    bad_npy = tmp_path / "bad.npy"
    np.save(bad_npy, np.array([[1.0, np.inf]] * 3))
    with pytest.raises(EmbeddingError, match=r"bad.npy: non-finite value inf at row 0, column 1"):
        load(bad_npy)
    with pytest.raises(EmbeddingError, match=r"file: vectors file .*absent.csv does not exist"):
        load(tmp_path / "absent.csv")
    no_png = make_split(["a"], png=[None])
    with pytest.raises(EmbeddingError, match="does not cover class 'a' of split test/hand: the "
                                             "class has no png_label"):
        get_class_embeddings(no_png, {"provider": "file", "path": str(narrow),
                                      "layout": "rows_by_png_label"}, None)


# -- clip (open_clip) ---------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                   "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}
CLIP_CLASSES = ["cat", "dog", "sky-other-merged", "traffic_light"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict[str, Any]:
    """One randomly initialised tiny open_clip model, its checkpoint file and tokenizer."""
    from zeroseg.platform.compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("clip")
    config_path = root / "zeroseg-tiny-clip.json"
    config_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model("zeroseg-tiny-clip", pretrained=None).eval()
    checkpoint = root / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"model": model, "tokenizer": open_clip.get_tokenizer("zeroseg-tiny-clip"),
            "checkpoint": checkpoint, "config": config_path, "root": root}


def _direct_clip(model: Any, tokenizer: Any, texts: list[str], templates: list[str]) -> np.ndarray:
    """Prompt ensemble computed here without the provider: normalise, average, normalise."""
    import torch

    rows = []
    with torch.no_grad():
        for text in texts:
            feats = model.encode_text(tokenizer([t.format(text) for t in templates])).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            mean = feats.mean(dim=0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def _clip_cfg(tiny: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"provider": "clip", "model_config": str(tiny["config"]),
            "checkpoint": str(tiny["checkpoint"]), **extra}


def test_clip_matches_a_direct_computation(tiny_clip) -> None:
    split = make_split(CLIP_CLASSES)
    matrix = get_class_embeddings(split, _clip_cfg(tiny_clip), None)
    texts = ["cat", "dog", "sky", "traffic light"]  # cleaned COCO names
    expected = _direct_clip(tiny_clip["model"], tiny_clip["tokenizer"], texts,
                            list(DEFAULT_TEMPLATES))
    assert matrix.shape == (4, 32) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    single = get_class_embeddings(split, _clip_cfg(tiny_clip, templates=["a photo of a {}."]),
                                  None)
    np.testing.assert_allclose(single, _direct_clip(tiny_clip["model"], tiny_clip["tokenizer"],
                                                    texts, ["a photo of a {}."]), atol=1e-5)
    assert np.abs(single - matrix).max() > 1e-3  # the ensemble is not one prompt
    raw_names = get_class_embeddings(split, _clip_cfg(tiny_clip, clean_names=False,
                                                      aliases={"cat": "kitten"}), None)
    np.testing.assert_allclose(raw_names, _direct_clip(
        tiny_clip["model"], tiny_clip["tokenizer"],
        ["kitten", "dog", "sky-other-merged", "traffic_light"], list(DEFAULT_TEMPLATES)),
        atol=1e-5)


def test_clip_cache_hits_and_rebuilds_when_the_checkpoint_changes(tiny_clip) -> None:
    import open_clip
    import torch

    root = tiny_clip["root"] / "rebuild"
    root.mkdir()
    checkpoint = root / "weights.pt"
    torch.save(tiny_clip["model"].state_dict(), checkpoint)
    split = make_split(CLIP_CLASSES[:2])
    cfg = _clip_cfg(tiny_clip, checkpoint=str(checkpoint), templates=["a photo of a {}."])
    built = compute_class_embeddings(split, cfg, root / "cache")
    hit = compute_class_embeddings(split, {**cfg, "device": "cpu", "batch_size": 3},
                                   root / "cache")
    assert (built.cache_status, hit.cache_status) == ("built", "hit")
    np.testing.assert_array_equal(hit.matrix, built.matrix)
    meta = json.loads(built.cache_path.with_suffix(".json").read_text())
    assert meta["created_by"]["open_clip_torch"] == open_clip.__version__
    assert set(meta["inputs"]) == {"checkpoint", "model_config"}

    torch.manual_seed(1)  # other weights, same architecture: same file size
    other = open_clip.create_model("zeroseg-tiny-clip", pretrained=None).eval()
    torch.save(other.state_dict(), checkpoint)
    rebuilt = compute_class_embeddings(split, cfg, root / "cache")
    assert rebuilt.cache_status == "built"
    assert "input file changed: checkpoint" in rebuilt.cache_reason
    np.testing.assert_allclose(rebuilt.matrix, _direct_clip(
        other, tiny_clip["tokenizer"], ["cat", "dog"], ["a photo of a {}."]), atol=1e-5)
    assert np.abs(rebuilt.matrix - built.matrix).max() > 1e-3


def test_clip_refuses_missing_or_foreign_checkpoints(tiny_clip, tmp_path: Path) -> None:
    import torch

    split = make_split(["cat"])
    with pytest.raises(EmbeddingError, match=r"clip: checkpoint file .*absent.pt does not exist "
                                             r"\(expected a local open_clip checkpoint file: "
                                             r"zeroseg never downloads weights"):
        get_class_embeddings(split, _clip_cfg(tiny_clip, checkpoint=str(tmp_path / "absent.pt")),
                             None)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(EmbeddingError, match=r"clip checkpoint .*foreign.pt: cannot be loaded "
                                             r"into open_clip model zeroseg-tiny-clip"):
        get_class_embeddings(split, _clip_cfg(tiny_clip, checkpoint=str(foreign)), None)
    with pytest.raises(ConfigError, match=r"embeddings.clip.model: 'ViT-Q-99' is not an "
                                          r"open_clip architecture"):
        get_class_embeddings(split, {"provider": "clip", "model": "ViT-Q-99",
                                     "checkpoint": str(tiny_clip["checkpoint"])}, None)


def test_clean_class_name() -> None:
    assert clean_class_name("sky-other-merged") == "sky"
    assert clean_class_name("wall-other-merged") == "wall"
    assert clean_class_name("tree-merged") == "tree"
    assert clean_class_name("traffic_light") == "traffic light"
    assert clean_class_name("wall-concrete") == "wall-concrete"


# -- the CLI hook -------------------------------------------------------------------------------

def test_embed_command_writes_and_summarises(tmp_path: Path) -> None:
    out = tmp_path / "out" / "synthetic.npy"
    cfg = {"provider": "attributes", "noise": 0.1}
    summary = embed_command("synthetic/default", cfg, tmp_path / "cache", out)
    assert (summary.split, summary.provider, summary.num_classes, summary.dim) == (
        "synthetic/default", "attributes", 32, 64)
    assert summary.num_unseen == 7 and summary.cache_status == "built"
    assert summary.out_path == str(out)
    matrix = np.load(out)
    np.testing.assert_array_equal(matrix, get_class_embeddings(synthetic_split(), cfg, None))
    sidecar = json.loads((tmp_path / "out" / "synthetic.npy.json").read_text())
    assert [c["name"] for c in sidecar["classes"]] == synthetic_split().names
    assert sidecar["config"]["noise"] == 0.1
    assert len(summary.unseen_nearest_seen) == 7
    assert summary.norm_min == pytest.approx(1.0, abs=1e-5)
    text = summary.format()
    assert "synthetic/default (32 classes, 7 unseen)" in text and "red star ->" in text
    json.dumps(summary.to_dict())  # serialisable for --json output

    again = embed_command(synthetic_split(), cfg, tmp_path / "cache", tmp_path / "s.csv")
    assert again.cache_status == "hit"
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=","), matrix, rtol=1e-6)
    with pytest.raises(ConfigError, match="out: .*s.pkl must end with one of .npy, .csv, .txt"):
        embed_command(synthetic_split(), cfg, None, tmp_path / "s.pkl")
    with pytest.raises(ConfigError, match="split 'synthetic/nope' is not registered"):
        embed_command("synthetic/nope", cfg, None)


def test_embed_command_with_a_shipped_file() -> None:
    summary = embed_command("voc12/spnet-15-5", {"provider": "file", "name": "voc12_word2vec"},
                            None)
    assert summary.cache_status == "disabled" and summary.dim == 300
    nearest_seen = {u: s for u, s, _ in summary.unseen_nearest_seen}
    assert nearest_seen["sheep"] == "cow"
    assert summary.source.endswith("voc12_word2vec.csv")
