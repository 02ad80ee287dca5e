"""Each object's map comes from the attention rows of ITS OWN generated tokens.

The map of a name uses, for each of its generated tokens t, the query row that generated
t: position ``prompt_len + t - 1`` (hf_backend module docstring); a multi-token name
averages its rows. Here every generated row attends to a DIFFERENT image patch (planted
through the backend's ``qk_hook`` inside the real ``generate``), so a wrong row index or a
multi-token name that uses only one of its rows lands on another patch.

The object names are fixed by replacing the parser in hf_backend (independent of how names
are parsed from text): token 0 is one object, tokens 1-2 one two-token object, token 3 one
object; tokens 4 and later belong to no object but are planted too, so that a row index
off by one in either direction still finds a planted row (and a wrong patch).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.results import ObjectName
from vlsam_ros.core.vlm import BACKENDS, hf_backend
from vlsam_ros.testing.tiny_vlm import FAMILIES, build_tiny_vlm

QUESTION = "Describe this driving scene."
GAIN = 8.0             # |q| = |k| = 8: logit 64 / sqrt(d), far above the tiny models' logits
PLANT_HEAD = 0
SIZE = (60, 90)        # non-square; several tiles for llava_next / idefics3
OBJECTS = (("first", (0, 1)), ("second third", (1, 3)), ("fourth", (3, 4)))
GENERATED = 6          # tokens 0..5 are planted (4 and 5: no object)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = build_tiny_vlm(request.param, seed=0)
    return BACKENDS[request.param](model, processor)


def _cfg(capture: str):
    return from_flat({"device": "cpu", "vlm.dtype": "float32",
                      "vlm.max_new_tokens": GENERATED + 2, "attention.capture": capture})


def _fixed_objects(text, char_spans, *args, **kwargs):
    """Stands in for parse_object_names: the same objects whatever the text."""
    assert len(char_spans) >= GENERATED, "the tiny model stopped too early for this test"
    return [ObjectName(name, span) for name, span in OBJECTS]


def _plant_rows(targets: dict[int, int]):
    """qk hook: the query row at absolute position r (a key of ``targets``) and the key at
    ``targets[r]`` both become GAIN times the basis vector e_i (i = r's rank), in query head
    PLANT_HEAD and its key head; so row r attends (almost) only to its own target key."""
    slots = {row: i for i, row in enumerate(sorted(targets))}

    def hook(layer, query, key):
        d = query.shape[-1]
        assert d >= len(slots)
        query, key = query.clone(), key.clone()
        kv_head = PLANT_HEAD // (query.shape[1] // key.shape[1])
        n_keys, n_q = key.shape[2], query.shape[2]
        for row, target in targets.items():
            direction = torch.zeros(d, dtype=query.dtype)
            direction[slots[row]] = GAIN
            key[:, kv_head, target] = direction
            local = row - (n_keys - n_q)          # this call's queries: [n_keys - n_q, n_keys)
            if 0 <= local < n_q:
                query[:, PLANT_HEAD, local] = direction
        return query, key
    return hook


def _cell_value(attention_map: np.ndarray, cell: tuple[int, int], layout) -> float:
    """The map at the pixel centre of a grid cell."""
    x0, y0, x1, y1 = layout.box_xyxy
    gr, gc = layout.grid_shape
    y = int((y0 + (cell[0] + 0.5) * (y1 - y0) / gr))
    x = int((x0 + (cell[1] + 0.5) * (x1 - x0) / gc))
    return float(attention_map[min(max(y, 0), SIZE[0] - 1), min(max(x, 0), SIZE[1] - 1)])


@pytest.mark.parametrize("capture", ["fast", "reference"])
def test_each_object_map_comes_from_its_own_token_rows(vlm, capture, monkeypatch):
    image = np.random.default_rng(3).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    inputs = vlm._inputs([vlm._prompt(QUESTION, with_image=True)], [image])
    ids = inputs["input_ids"][0].tolist()
    layout = vlm.image_layout(ids, SIZE, inputs, 0)
    prompt_len = len(ids)
    gr, gc = layout.grid_shape
    assert gr >= 4 and gc >= 4
    # One patch per generated token t (the row prompt_len + t - 1 generates it).
    cells = [(1, 1), (1, gc - 2), (gr - 2, 1), (gr - 2, gc - 2), (1, gc // 2), (gr - 2, gc // 2)]
    assert len(set(cells)) == GENERATED
    targets = {prompt_len + t - 1: int(layout.grid_index[cells[t]]) for t in range(GENERATED)}
    monkeypatch.setattr(hf_backend, "parse_object_names", _fixed_objects)
    vlm.qk_hook = _plant_rows(targets)
    try:
        answer = vlm.describe([image], [QUESTION], _cfg(capture).vlm, _cfg(capture).attention)[0]
    finally:
        vlm.qk_hook = None
    assert [o.name for o in answer.objects] == [name for name, _ in OBJECTS]
    maps = answer.attention_maps
    values = np.array([[_cell_value(m, c, layout) for c in cells] for m in maps])  # (3, 6)

    # Single-token names: the map peaks on the patch of that token's row, nowhere else high.
    for obj, token in ((0, 0), (2, 3)):
        assert values[obj, token] == pytest.approx(values[obj].max()), values[obj]
        others = np.delete(values[obj], token)
        assert others.max() < 0.5 * values[obj, token], values[obj]
    # The two-token name averages the rows of tokens 1 and 2: both patches stand far above
    # every other patch (one row only would leave the other patch at the leak level). They
    # need not be equal: the column regularisation weights later image tokens more.
    both = values[1, [1, 2]]
    rest = values[1, [0, 3, 4, 5]]
    assert values[1].argmax() in (1, 2), values[1]
    assert both.min() > 3 * rest.max(), values[1]
    print(f"{vlm.family} {capture}: per-object values at the 6 planted patches\n{values}")
