"""Images stored as PNG/JPEG bytes or fixed-size arrays; token ids for embeddings."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from infgate.data.columns import ColumnOptions, ModelInputSpec
from infgate.data.training import TrainingData
from infgate.data.validation import embedding_size
from infgate.errors import DatasetMismatchError, InvalidInputError
from infgate.influence.batches import BatchSource
from infgate.registry.datasets import check_data_fits
from PIL import Image
from torch import nn


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _pixels(n: int, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_png_bytes_decode_to_n_c_h_w_exactly() -> None:
    gray, rgb = _pixels(6, (8, 8), 0), _pixels(6, (5, 7, 3), 1)
    labels = [0, 1, 2, 0, 1, 2]
    g = TrainingData.from_frame(
        pd.DataFrame({"image": [_encode(p) for p in gray], "label": labels})
    )
    assert g.features.shape == (6, 1, 8, 8) and g.features.dtype == np.float32
    np.testing.assert_array_equal(g.features[:, 0], np.stack(gray))  # PNG is lossless
    assert g.image_shape == (8, 8)
    c = TrainingData.from_frame(pd.DataFrame({"img": [_encode(p) for p in rgb], "label": labels}))
    assert c.features.shape == (6, 3, 5, 7)
    np.testing.assert_array_equal(c.features, np.stack(rgb).transpose(0, 3, 1, 2))
    scaled = TrainingData.from_frame(
        pd.DataFrame({"image": [_encode(p) for p in gray], "label": labels}),
        options=ColumnOptions(image_scale=255.0),
    )
    np.testing.assert_allclose(scaled.features[:, 0], np.stack(gray) / np.float32(255), rtol=1e-6)


def test_jpeg_bytes_decode_to_the_stored_size() -> None:
    flat = [np.full((16, 12), v, dtype=np.uint8) for v in (10, 200)]
    data = TrainingData.from_frame(
        pd.DataFrame({"image": [_encode(p, "JPEG") for p in flat], "label": [0, 1]})
    )
    assert data.features.shape == (2, 1, 16, 12)
    np.testing.assert_allclose(data.features[:, 0].mean(axis=(1, 2)), [10, 200], atol=2)


def test_mixed_image_sizes_name_the_first_offending_row() -> None:
    imgs = [_encode(p) for p in _pixels(3, (8, 8), 2)] + [_encode(_pixels(1, (10, 12), 3)[0])]
    df = pd.DataFrame({"example_id": ["a", "b", "c", "d"], "image": imgs, "label": [0, 1, 0, 1]})
    with pytest.raises(InvalidInputError) as err:
        TrainingData.from_frame(df)
    assert str(err.value) == (
        "train image column 'image': row 3 (example_id 'd') is 10x12 but row 0 is 8x8; "
        "resize the images to one size before the scan"
    )
    bad = df.assign(image=[imgs[0], b"not an image", imgs[1], imgs[2]])
    with pytest.raises(InvalidInputError, match="row 1 \\(example_id 'b'\\) is not a PNG/JPEG"):
        TrainingData.from_frame(bad)


def test_grayscale_and_cmyk_images_among_colour_ones_become_rgb() -> None:
    """A grayscale PNG among RGB ones (as real photo sets hold) is replicated to RGB, a CMYK
    JPEG converted to RGB; colour rows after a grayscale first row are converted down only
    when the input shape asks for 1 channel, else refused naming the option."""
    rgb = _pixels(3, (6, 6, 3), 5)
    gray = _pixels(1, (6, 6), 6)[0]
    cmyk = io.BytesIO()
    Image.fromarray(rgb[1]).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    imgs = [_encode(rgb[0]), _encode(gray), cmyk.getvalue(), _encode(rgb[2])]
    df = pd.DataFrame({"example_id": list("abcd"), "image": imgs, "label": [0, 1, 0, 1]})
    data = TrainingData.from_frame(df)
    assert data.features.shape == (4, 3, 6, 6)
    np.testing.assert_array_equal(data.features[1], np.stack([gray] * 3))
    np.testing.assert_allclose(data.features[2], rgb[1].transpose(2, 0, 1), atol=12)
    gray_first = df.assign(image=[imgs[1], imgs[0], imgs[3], imgs[1]])
    with pytest.raises(InvalidInputError) as err:
        TrainingData.from_frame(gray_first)
    msg = str(err.value)
    assert "row 1 (example_id 'b') is 6x6 with 3 channels but row 0 is 6x6" in msg
    assert "input_shape" in msg and "\n" not in msg
    one = TrainingData.from_frame(gray_first, options=ColumnOptions(input_shape=(1, 6, 6)))
    assert one.features.shape == (4, 1, 6, 6)
    want = np.asarray(Image.fromarray(rgb[0]).convert("L"))
    np.testing.assert_array_equal(one.features[1, 0], want)


def test_fixed_size_array_images_flat_and_nested() -> None:
    pix = _pixels(4, (8, 8), 4)
    flat = pd.DataFrame({"pixels": [p.reshape(-1) for p in pix], "label": [0, 1, 2, 3]})
    shaped = TrainingData.from_frame(flat, options=ColumnOptions(input_shape=(1, 8, 8)))
    assert shaped.features.shape == (4, 1, 8, 8) and shaped.features.dtype == np.float32
    np.testing.assert_array_equal(shaped.features[:, 0], np.stack(pix))
    nested = pd.DataFrame(
        {"pixels": [[list(r) for r in p.astype(float)] for p in pix], "label": [0, 1, 2, 3]}
    )
    n = TrainingData.from_frame(nested, spec=ModelInputSpec(shape=(-1, 1, 8, 8), dtype="float32"))
    assert n.features.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(n.features[:, 0], np.stack(pix))
    ragged = nested.assign(pixels=[*nested["pixels"][:2], [[1.0] * 8] * 7, nested["pixels"][3]])
    with pytest.raises(
        InvalidInputError, match="row 2 holds an array of length 7 but row 0 holds 8"
    ):
        TrainingData.from_frame(ragged)


def _token_model(vocab: int = 20, length: int = 5) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Embedding(vocab, 4), nn.Flatten(), nn.Linear(4 * length, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_token_lists_and_declared_int_columns_stay_int64() -> None:
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 20, (6, 5))
    listed = TrainingData.from_frame(pd.DataFrame({"tokens": list(ids), "label": [0, 1, 2] * 2}))
    assert listed.features.dtype == np.int64
    np.testing.assert_array_equal(listed.features, ids)
    cols = pd.DataFrame(ids, columns=[f"t{i}" for i in range(5)]).assign(label=[0, 1, 2] * 2)
    assert TrainingData.from_frame(cols).features.dtype == np.float32  # numbers, not tokens
    tok = TrainingData.from_frame(
        cols, options=ColumnOptions(token_columns=tuple(f"t{i}" for i in range(5)))
    )
    assert tok.features.dtype == np.int64
    np.testing.assert_array_equal(tok.features, ids)
    x, _ = tok.as_tensors()
    assert x.dtype == torch.int64
    batches = list(BatchSource(tok, batch_size=4, device=torch.device("cpu"), dtype=torch.float64))
    assert [b[1].dtype for b in batches] == [torch.int64, torch.int64]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.as_tensor(ids))
    model = _token_model()
    assert check_data_fits(model, tok.features, tok.labels) == 3


@pytest.mark.parametrize(
    ("bad", "row", "match"),
    [
        (
            20,
            4,
            "has token id 20 \\(row 4\\) but the model's first nn.Embedding has only 20 rows "
            "\\(ids 0..19\\); re-tokenize with the model's vocabulary",
        ),
        (-1, 2, "has token id -1 \\(row 2\\); token ids must be >= 0"),
    ],
)
def test_out_of_range_token_ids_rejected_before_compute(bad: int, row: int, match: str) -> None:
    ids = np.random.default_rng(6).integers(0, 20, (6, 5))
    ids[row, 3] = bad
    data = TrainingData.from_frame(pd.DataFrame({"tokens": list(ids), "label": [0, 1, 2] * 2}))
    calls: list[int] = []
    model = _token_model()
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(InvalidInputError, match=match):
        check_data_fits(model, data.features, data.labels)
    assert calls == []  # the model never ran


def test_embedding_size_of_an_exported_graph() -> None:
    model = _token_model(vocab=33)
    x = torch.zeros(2, 5, dtype=torch.long)
    exported = torch.export.export(model, (x,)).module()
    assert embedding_size(model) == 33
    assert embedding_size(exported) == 33
    assert embedding_size(nn.Linear(3, 2)) is None


def test_wrong_width_for_the_model_is_one_line_naming_columns() -> None:
    df = pd.DataFrame(np.ones((3, 5), np.float32), columns=list("vwxyz")).assign(label=[0, 1, 0])
    from infgate.data.columns import resolve_columns
    from infgate.data.training import frame_table

    plan = resolve_columns(frame_table(df).schema)
    data = TrainingData.from_frame(df)
    with pytest.raises(DatasetMismatchError) as err:
        check_data_fits(nn.Linear(64, 10), data.features, data.labels, plan=plan)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "training data columns [v..z (5 columns)] (from numeric columns (default)) rows of shape "
        "(5,) do not fit the model ("
    )
    assert msg.endswith(
        "set option `feature_columns` or model-version tag `infgate.feature_columns`, or "
        "option `input_shape` or model-version tag `infgate.input_shape` (e.g. '1x8x8')"
    )


def _ragged(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 20, k, dtype=np.int64) for k in lengths]


def _padded_by_hand(rows: list[np.ndarray], length: int, pad: int) -> np.ndarray:
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def test_ragged_token_sequences_pad_to_the_longest_or_to_input_shape() -> None:
    """One list column of sequences of different lengths is padded at the end with the pad
    id: to the longest training sequence, or to ``input_shape``; evaluation rows read with
    the training plan pad to the same length."""
    from infgate.data.training import EvalData, frame_table

    rows = _ragged([3, 5, 2, 4])
    df = pd.DataFrame({"example_id": list("abcd"), "tokens": rows, "label": [0, 1, 2, 0]})
    data = TrainingData.from_frame(df, options=ColumnOptions(pad_token_id=0))
    assert data.features.dtype == np.int64
    np.testing.assert_array_equal(data.features, _padded_by_hand(rows, 5, 0))
    wide = TrainingData.from_frame(df, options=ColumnOptions(pad_token_id=7, input_shape=(8,)))
    np.testing.assert_array_equal(wide.features, _padded_by_hand(rows, 8, 7))
    assert data.content_hash != wide.content_hash

    from infgate.data.columns import resolve_columns, with_sequence_length
    from infgate.data.decode import longest_sequence

    table = frame_table(df)
    plan = resolve_columns(table.schema, ColumnOptions(pad_token_id=0))
    plan = with_sequence_length(plan, longest_sequence(table.column("tokens")))
    assert plan.input_shape == (5,) and plan.shape_origin == "the longest training sequence"
    longer = with_sequence_length(
        resolve_columns(table.schema, ColumnOptions(pad_token_id=0)), 5, elsewhere=7
    )
    assert longer.input_shape == (7,) and longer.shape_origin == "the longest evaluation sequence"
    assert "padded with id 0 (from option pad_token_id)" in plan.describe()
    short = _ragged([1, 2], seed=1)
    ev = EvalData.from_table(frame_table(pd.DataFrame({"tokens": short, "label": [1, 0]})), plan)
    np.testing.assert_array_equal(ev.features, _padded_by_hand(short, 5, 0))
    long = pd.DataFrame({"example_id": ["e0", "e1"], "tokens": _ragged([2, 6]), "label": [0, 1]})
    with pytest.raises(InvalidInputError) as err:
        EvalData.from_table(frame_table(long), plan)
    msg = str(err.value)
    assert "'e1'" in msg and "holds 6 tokens" in msg and "the longest training sequence" in msg
    assert "input_shape" in msg and "\n" not in msg


def test_ragged_tokens_without_a_pad_id_name_the_option() -> None:
    df = pd.DataFrame({"tokens": _ragged([3, 5]), "label": [0, 1]})
    with pytest.raises(InvalidInputError, match="pad token sequences with option `pad_token_id`"):
        TrainingData.from_frame(df)


@pytest.mark.parametrize(
    ("column", "options", "match"),
    [
        ([np.array([1, 2]), np.array([], np.int64)], {}, "row 1 holds no tokens"),
        ([[0.5, 1.0], [2.0]], {}, "gives a list of floats"),
        ([[[1, 2]], [[3, 4], [5, 6]]], {}, "pads flat lists of token ids"),
        ([[1, 2], [3]], {"input_shape": (2, 1)}, "padded token sequences are 1-D"),
        ([[1, 2], [3]], {"pad_token_id": -1}, "`pad_token_id` must be an int >= 0"),
    ],
)
def test_padding_refuses_what_it_cannot_pad(column: list, options: dict, match: str) -> None:
    df = pd.DataFrame({"tokens": column, "label": [0, 1]})
    with pytest.raises((InvalidInputError, DatasetMismatchError), match=match):
        TrainingData.from_frame(df, options=ColumnOptions(**{"pad_token_id": 0, **options}))


def test_pad_id_on_numeric_columns_is_refused() -> None:
    from infgate.errors import DataResolutionError

    df = pd.DataFrame({"x0": [1.0, 2.0], "x1": [3.0, 4.0], "label": [0, 1]})
    with pytest.raises(DataResolutionError, match="pads one list column of token ids"):
        TrainingData.from_frame(df, options=ColumnOptions(pad_token_id=0))


def test_padding_idx_of_a_module_and_of_an_exported_graph() -> None:
    from infgate.registry.inputs import embedding_padding_idx

    model = nn.Sequential(nn.Embedding(9, 4, padding_idx=3), nn.Flatten(), nn.Linear(20, 2))
    assert embedding_padding_idx(model) == 3
    graph = torch.export.export(model, (torch.zeros(2, 5, dtype=torch.long),)).module()
    assert embedding_padding_idx(graph) == 3
    assert embedding_padding_idx(_token_model()) is None  # no padding_idx
    two = nn.ModuleList([nn.Embedding(9, 4, padding_idx=0), nn.Embedding(9, 4, padding_idx=1)])
    assert embedding_padding_idx(two) is None  # ambiguous: no default


def test_model_inputs_decode_stacked_and_padded() -> None:
    """Several model inputs (ids and an attention mask, stored ragged): each padded, the ids
    with the pad id and the mask with 0, stacked along dimension 1; a boolean mask reads as
    0/1; evaluation rows read the same way."""
    from infgate.data.training import EvalData, frame_table

    ids = _ragged([3, 5, 2])
    mask = [np.ones(len(r), dtype=bool) for r in ids]
    df = pd.DataFrame({"input_ids": ids, "attention_mask": mask, "label": [0, 1, 2]})
    opts = ColumnOptions(model_inputs=("input_ids", "attention_mask"), pad_token_id=7)
    data = TrainingData.from_frame(df, options=opts)
    assert data.features.shape == (3, 2, 5) and data.features.dtype == np.int64
    np.testing.assert_array_equal(data.features[:, 0], _padded_by_hand(ids, 5, 7))
    np.testing.assert_array_equal(data.features[:, 1], _padded_by_hand(mask, 5, 0))
    from infgate.data.columns import resolve_columns, with_sequence_length

    plan = with_sequence_length(resolve_columns(frame_table(df).schema, opts), 5)
    assert plan.n_inputs == 2 and plan.columns == ("input_ids", "attention_mask")
    ev = EvalData.from_table(frame_table(df.iloc[:2]), plan)
    np.testing.assert_array_equal(ev.features, data.features[:2])


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (
            {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1, 1]]},
            r"row 1 has 1 values in 'input_ids' but 2 in 'attention_mask'",
        ),
        (
            {"input_ids": [[1, 2], [3, 4]], "attention_mask": [0.5, 1.0]},
            "must be list columns of integers",
        ),
    ],
)
def test_model_inputs_refuse_what_does_not_line_up(frame: dict, match: str) -> None:
    from infgate.errors import DataResolutionError

    df = pd.DataFrame({**frame, "label": [0, 1]})
    opts = ColumnOptions(model_inputs=("input_ids", "attention_mask"), pad_token_id=0)
    with pytest.raises((InvalidInputError, DataResolutionError), match=match):
        TrainingData.from_frame(df, options=opts)
    with pytest.raises(InvalidInputError, match="two or more distinct columns"):
        ColumnOptions(model_inputs=("input_ids",))


def test_a_signature_of_several_tensors_names_its_columns_or_asks() -> None:
    from infgate.data.columns import resolve_columns
    from infgate.data.training import frame_table
    from infgate.errors import DataResolutionError

    df = pd.DataFrame({"ids": [[1, 2], [3, 4]], "mask": [[1, 1], [1, 0]], "label": [0, 1]})
    schema = frame_table(df).schema
    named = ModelInputSpec(shape=(-1, 2), dtype="int64", inputs=2, input_names=("ids", "mask"))
    plan = resolve_columns(schema, ColumnOptions(), named)
    assert plan.n_inputs == 2 and plan.origin == "the model signature"
    assert plan.input_shape == (2,)
    unnamed = ModelInputSpec(shape=(-1, 2), dtype="int64", inputs=2)
    with pytest.raises(DataResolutionError, match="option `model_inputs` or model-version tag"):
        resolve_columns(schema, ColumnOptions(), unnamed)
