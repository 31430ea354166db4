import numpy as np
import pytest

from clipforge.data.synthetic import COLOUR_NAMES, HELDOUT_PAIRS, SHAPES, SyntheticWorld


def test_deterministic_by_seed_and_index():
    a, b = SyntheticWorld(50, 48, seed=3), SyntheticWorld(50, 48, seed=3)
    for i in (0, 7, 49):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].captions == b[i].captions
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(SyntheticWorld(50, 48, seed=4)[0].image))


def test_vocabulary_and_variety():
    world = SyntheticWorld(400, 32)
    scenes = [world[i] for i in range(400)]
    assert len(SHAPES) >= 8 and len(COLOUR_NAMES) >= 8
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOUR_NAMES)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert len({s.background for s in scenes}) >= 4
    assert len({c for s in scenes for c in s.captions}) > 300  # many phrasings
    assert all(" a orange" not in c and not c.startswith("a orange") for s in scenes for c in s.captions)


@pytest.mark.parametrize("size", [32, 96])
def test_masks_boxes_and_attributes_agree(size):
    world = SyntheticWorld(30, size)
    for i in range(30):
        s = world[i]
        assert s.image.size == (size, size)
        assert s.instance_mask.shape == s.class_mask.shape == (size, size)
        assert set(np.unique(s.instance_mask)) == set(range(len(s.objects) + 1))
        for k, o in enumerate(s.objects):
            ys, xs = np.nonzero(s.instance_mask == k + 1)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert (s.class_mask[s.instance_mask == k + 1] == SHAPES.index(o.shape) + 1).all()
            assert o.colour in o.phrase and o.shape in o.phrase
            # the object's pixels really have its colour (mean within tolerance of the palette)
            rgb = np.asarray(s.image)[s.instance_mask == k + 1].mean(axis=0)
            from clipforge.data.synthetic import COLOURS

            assert np.abs(rgb - np.array(COLOURS[o.colour])).max() < 30
        for o in s.objects:  # some captions leave out the colour or the shape, never both
            assert any(o.shape in c or o.colour in c for c in s.captions)
        assert all(any(o.shape in c or o.colour in c for o in s.objects) for c in s.captions)
        assert s.attributes["shapes"] == [o.shape for o in s.objects]


def test_heldout_compositions_never_in_training():
    train = SyntheticWorld(1500, 32, split="train")
    for i in range(1500):
        s = train[i]
        assert not any((o.shape, o.colour) in HELDOUT_PAIRS for o in s.objects)
        for c in s.captions:
            assert not any(f"{colour} {shape}" in c for shape, colour in HELDOUT_PAIRS)
    held = SyntheticWorld(100, 32, split="heldout")
    assert all(
        len(held[i].objects) == 1 and (held[i].objects[0].shape, held[i].objects[0].colour) in HELDOUT_PAIRS
        for i in range(100)
    )
    # every shape and every colour is still seen in training
    assert {s for s, _ in HELDOUT_PAIRS} == set(SHAPES) and {c for _, c in HELDOUT_PAIRS} == set(COLOUR_NAMES)
