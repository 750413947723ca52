"""The FSKIL protocol's pure parts: class order, base rows, shots, prototypes, accuracies,
the whole protocol on a hand-made split, and the log-mel baseline on the small corpus."""

import dataclasses

import pytest
import torch

from workers import fskil, synth
from workers.constants import FEATURES
from workers.data import Split, load_prepared
from workers.fskil import Protocol

CORE_WORDS = {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
              "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def make_split(labels: list[int], dim: int = 4, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    features = {name: torch.randn(n, 3, dim, generator=g)
                for name in ("speech", "formant", "residual")}
    return Split(features=features, labels=torch.tensor(labels),
                 speakers=[f"spk{i % 3}" for i in range(n)], clips=[f"clip{i}" for i in range(n)])


# --- protocol and class order --------------------------------------------------------


def test_protocol_defaults_and_validation():
    p = Protocol()
    assert (p.base_classes, p.ways, p.shots, p.sessions, p.episodes) == (20, 3, 5, 6, 10)
    assert p.words == 35
    for bad in ({"ways": 0}, {"shots": -1}, {"sessions": 0}, {"episodes": 0},
                {"base_classes": 2.5}, {"shots": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Protocol(**bad)
    assert p.prototypes == "normalised" and p.normalize
    assert not Protocol(prototypes="reference").normalize
    with pytest.raises(ValueError, match="prototypes 'plain'; allowed: normalised, reference"):
        Protocol(prototypes="plain")
    with pytest.raises(ValueError, match=r"20 \+ 3 \* 5 = 35"):
        p.check_words(34)
    Protocol(base_classes=30, ways=5, sessions=2).check_words(35)  # exactly enough


def test_default_order_follows_the_reference_for_the_35_words():
    assert sorted(fskil.REFERENCE_ORDER) == sorted(synth.WORDS)
    order = fskil.default_class_order(list(synth.WORDS))
    assert order == list(fskil.REFERENCE_ORDER)
    sessions = fskil.session_classes(order, Protocol())
    assert set(sessions[0]) == CORE_WORDS
    assert sessions[1:] == [["dog", "wow", "house"], ["marvin", "bird", "happy"],
                            ["cat", "sheila", "bed"], ["tree", "backward", "visual"],
                            ["follow", "learn", "forward"]]
    # another label set keeps its own order
    assert fskil.default_class_order(["b", "a", "c"]) == ["b", "a", "c"]


def test_session_classes_sizes_and_too_short_order():
    order = list(range(40))
    sessions = fskil.session_classes(order, Protocol(base_classes=4, ways=2, sessions=3))
    assert sessions == [[0, 1, 2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="needs"):
        fskil.session_classes(order[:34], Protocol())


# --- --class-order files -------------------------------------------------------------


@pytest.fixture
def order_file(tmp_path):
    def write(text):
        path = tmp_path / "order.txt"
        path.write_text(text)
        return path
    return write


def test_class_order_file_is_read(order_file):
    words = list(reversed(synth.WORDS))
    text = "# my lab's split\n\n" + "\n".join(words[:10]) + "  # base, part one\n" + \
        "\n".join(words[10:]) + "\n"
    assert fskil.read_class_order(order_file(text), synth.WORDS, Protocol()) == words


@pytest.mark.parametrize("content, message", [
    ("\n".join(synth.WORDS[:34]) + "\nbanana\n", r"unknown word\(s\) 'banana'; allowed: backward"),
    ("\n".join(synth.WORDS) + "\nyes\n", r"repeats 'yes' \(lines 34 and 36\)"),
    ("\n".join(synth.WORDS[:30]) + "\n", r"has 30 words; .* = 35"),
    ("", "has 0 words"),
    ("# only a comment\n\n", "has 0 words"),
])
def test_bad_class_order_files_are_refused_in_one_line(order_file, content, message):
    with pytest.raises(ValueError, match=message) as err:
        fskil.read_class_order(order_file(content), synth.WORDS, Protocol())
    assert "\n" not in str(err.value)


def test_missing_class_order_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read class order file"):
        fskil.read_class_order(tmp_path / "nope.txt", synth.WORDS, Protocol())


# --- base rows -----------------------------------------------------------------------


def test_base_rows_hold_every_base_clip_and_no_novel_clip():
    protocol = Protocol(base_classes=3, ways=2, sessions=3)  # 7 words
    order = [6, 2, 9, 0, 4, 8, 1]  # base words 6, 2, 9; word 5 and 3 are not in the order
    labels = torch.tensor([0, 6, 5, 2, 9, 9, 3, 4, 6, 8, 1, 2, 0])
    rows, base_labels = fskil.base_rows(labels, order, protocol)
    assert rows.tolist() == [1, 3, 4, 5, 8, 11]  # all of them, in split order
    assert set(labels[rows].tolist()) <= {6, 2, 9}
    assert base_labels.tolist() == [0, 1, 2, 2, 0, 1]  # position in the order

    split = make_split(labels.tolist())
    base = fskil.base_split(split, order, protocol)
    assert base.labels.tolist() == [0, 1, 2, 2, 0, 1]
    assert base.clips == [f"clip{i}" for i in [1, 3, 4, 5, 8, 11]]
    everything = torch.arange(len(base))
    for name, value in zip(FEATURES, base.take(everything), strict=True):
        assert torch.equal(value, split.features[name][rows])
    assert base.features is split.features  # a view: no feature is copied


def test_base_split_of_the_small_corpus_reads_only_base_words(small_prepared):
    data = load_prepared(small_prepared, splits=("train",))
    train = data.splits["train"]
    order = fskil.default_class_order(data.labels)
    ids = fskil.class_ids(order, data.labels)
    rows, _ = fskil.base_rows(train.labels, ids, Protocol())
    words = {data.labels[i] for i in train.labels[rows].tolist()}
    assert words == CORE_WORDS
    assert len(rows) == int(torch.isin(train.labels, torch.tensor(ids[:20])).sum())


# --- shots ---------------------------------------------------------------------------


def test_shots_are_deterministic_distinct_and_of_the_right_class():
    labels = torch.arange(6).repeat(40)[torch.randperm(240, generator=torch.Generator()
                                                       .manual_seed(1))]
    novel = [4, 1, 5]
    a = fskil.draw_shots(labels, novel, 5, seed=3, episode=0)
    assert torch.equal(a, fskil.draw_shots(labels, novel, 5, seed=3, episode=0))
    assert labels[a].tolist() == [4] * 5 + [1] * 5 + [5] * 5  # grouped in class order
    assert len(set(a.tolist())) == 15  # no repeats
    others = [fskil.draw_shots(labels, novel, 5, seed=3, episode=e) for e in (1, 2)]
    others.append(fskil.draw_shots(labels, novel, 5, seed=4, episode=0))
    for b in others:
        for k in range(3):  # every word's draw changes with the episode and the seed
            assert set(a[5 * k:5 * k + 5].tolist()) != set(b[5 * k:5 * k + 5].tolist())
    # a word's draw does not depend on the words drawn with it
    assert torch.equal(fskil.draw_shots(labels, [1], 5, seed=3, episode=0), a[5:10])


def test_too_few_clips_for_the_shots_names_the_word():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="'bed' has 3 training clips, fewer than shots=5"):
        fskil.draw_shots(labels, [1, 0], 5, seed=0, episode=0, names=["bed", "cat"])


# --- prototypes, classification, accuracies ------------------------------------------


def test_prototypes_are_class_means_of_normalised_embeddings():
    emb = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [0.0, -5.0], [7.0, 7.0]])
    labels = torch.tensor([8, 3, 8, 3, 6])
    protos = fskil.prototypes(emb, labels, [3, 8])
    # class 3: (1, 0) and (0, -1); class 8: (0.6, 0.8) and (0, 1)
    assert torch.allclose(protos, torch.tensor([[0.5, -0.5], [0.3, 0.9]]))
    plain = fskil.prototypes(emb, labels, [3, 8], normalize=False)  # the reference's mean
    assert torch.allclose(plain, torch.tensor([[0.5, -2.5], [1.5, 3.0]]))
    with pytest.raises(ValueError, match="class 4"):
        fskil.prototypes(emb, labels, [3, 4])


# A hand-made 2-D set on which the two kinds of prototype disagree. Word 0's clips point
# one way (0 degrees); word 1 has a long clip at 90 and a short one at 0 degrees, word 2 a
# long one at -90 and a short one at 0: averaged after normalising they point at 45 and
# -45 degrees, averaged as they are (the reference) at 84.3 and -84.3 degrees.
HAND_TRAIN = ([0, 0, 1, 1, 2, 2],
              [[1.0, 0.0], [3.0, 0.0], [0.0, 10.0], [1.0, 0.0], [0.0, -10.0], [1.0, 0.0]])
# Test clips (word, angle in degrees): 30 is nearer 45 than 0 but nearer 0 than 84.3; -30
# likewise against -45 and -84.3; 70 and -80 are their own word's under both.
HAND_TEST = [(0, 30.0), (1, 70.0), (0, -30.0), (2, -80.0)]


def hand_test_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.tensor([a for _, a in HAND_TEST]).deg2rad()
    return torch.tensor([w for w, _ in HAND_TEST]), torch.stack([angles.cos(), angles.sin()], 1)


def test_reference_prototypes_are_plain_means_and_change_the_predictions():
    labels, emb = torch.tensor(HAND_TRAIN[0]), torch.tensor(HAND_TRAIN[1])
    normalised = fskil.prototypes(emb, labels, [0, 1, 2])
    reference = fskil.prototypes(emb, labels, [0, 1, 2], normalize=False)
    assert torch.allclose(normalised, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, -0.5]]))
    assert torch.allclose(reference, torch.tensor([[2.0, 0.0], [0.5, 5.0], [0.5, -5.0]]))
    target, queries = hand_test_embeddings()
    assert fskil.classify(queries, normalised).tolist() == [1, 1, 2, 2]
    assert fskil.classify(queries, reference).tolist() == target.tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize("mode,session0,session1", [
    # normalised: 30 degrees goes to word 1 (45), -30 to word 2 (-45) once it is there
    ("normalised", {"overall": 2 / 3, "seen": 0.75, "unseen": None, "harmonic": None},
     {"overall": 0.5, "seen": 0.5, "unseen": 1.0, "harmonic": 2 / 3}),
    # reference: plain means of base and novel clips put every test clip right
    ("reference", {"overall": 1.0, "seen": 1.0, "unseen": None, "harmonic": None},
     {"overall": 1.0, "seen": 1.0, "unseen": 1.0, "harmonic": 1.0}),
])
def test_protocol_makes_base_and_novel_prototypes_as_it_says(mode, session0, session1):
    words = ["w0", "w1", "w2"]
    train, test = make_split(HAND_TRAIN[0]), make_split([w for w, _ in HAND_TEST])
    train_emb, (_, test_emb) = torch.tensor(HAND_TRAIN[1]), hand_test_embeddings()

    def table(split, rows):
        return (train_emb if split is train else test_emb)[rows]

    # word 2 (novel) has exactly `shots` training clips: every episode draws both
    protocol = Protocol(base_classes=2, ways=1, shots=2, sessions=2, episodes=2, prototypes=mode)
    result = fskil.run_protocol(table, train, test, words, words, protocol, seed=0)
    for got, want in zip(result.per_session, (session0, session1), strict=True):
        assert got == {k: pytest.approx(v) if v is not None else None for k, v in want.items()}
    assert result.protocol["prototypes"] == mode
    if mode == "normalised":  # the default: today's numbers
        default = Protocol(base_classes=2, ways=1, shots=2, sessions=2, episodes=2)
        assert fskil.run_protocol(table, train, test, words, words, default,
                                  seed=0).per_session == result.per_session


def test_classify_is_cosine_not_euclidean_or_dot():
    protos = torch.tensor([[0.2, 0.01], [0.3, 0.2], [3.0, 2.0]])
    # nearest by angle: 0; by distance: 1; by dot product: 2
    assert fskil.classify(torch.tensor([[1.0, 0.0]]), protos).tolist() == [0]


def from_confusion(matrix: dict[int, dict[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    target, pred = [], []
    for true, row in matrix.items():
        for guess, count in row.items():
            target += [true] * count
            pred += [guess] * count
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))
    return torch.tensor(pred)[order], torch.tensor(target)[order]


def test_four_accuracies_on_a_hand_made_confusion_matrix():
    # base words 7 and 2, novel words 5 and 0 (ids need not be 0..C-1)
    pred, target = from_confusion({
        7: {7: 3, 2: 1},  # 3/4 right
        2: {2: 1, 5: 1},  # 1/2
        5: {5: 1, 7: 4},  # 1/5
        0: {0: 1},        # 1/1
    })
    acc = fskil.session_accuracies(pred, target, base=[7, 2], novel=[5, 0])
    assert acc["overall"] == pytest.approx(6 / 12)  # pooled over clips
    assert acc["seen"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # 0.625, not pooled 4/6
    assert acc["unseen"] == pytest.approx((1 / 5 + 1) / 2)  # 0.6, not pooled 2/6
    assert acc["harmonic"] == pytest.approx(2 * 0.625 * 0.6 / (0.625 + 0.6))


def test_session_zero_and_degenerate_accuracies():
    pred, target = from_confusion({7: {7: 1, 2: 1}, 2: {2: 3}})
    acc = fskil.session_accuracies(pred, target, base=[7, 2], novel=[])
    assert acc == {"overall": pytest.approx(0.8), "seen": pytest.approx(0.75),
                   "unseen": None, "harmonic": None}
    pred, target = from_confusion({7: {2: 2}, 5: {7: 1}})
    acc = fskil.session_accuracies(pred, target, base=[7], novel=[5])
    assert (acc["seen"], acc["unseen"], acc["harmonic"]) == (0.0, 0.0, 0.0)


def test_episode_means_and_headline():
    e1 = [{"overall": 0.9, "seen": 0.9, "unseen": None, "harmonic": None},
          {"overall": 0.6, "seen": 0.8, "unseen": 0.2, "harmonic": 0.32}]
    e2 = [{"overall": 0.9, "seen": 0.9, "unseen": None, "harmonic": None},
          {"overall": 0.8, "seen": 0.6, "unseen": 0.6, "harmonic": 0.6}]
    mean = fskil.mean_over_episodes([e1, e2])
    assert mean[0] == {"overall": 0.9, "seen": 0.9, "unseen": None, "harmonic": None}
    assert mean[1]["overall"] == pytest.approx(0.7)
    assert (mean[1]["seen"], mean[1]["unseen"]) == (pytest.approx(0.7), pytest.approx(0.4))
    assert mean[1]["harmonic"] == pytest.approx(2 * 0.7 * 0.4 / 1.1)  # of the means
    assert fskil.headline(mean) == {"mean_acc": pytest.approx(0.8),
                                    "last_acc": pytest.approx(0.7),
                                    "last_harmonic": pytest.approx(0.56 / 1.1)}


# --- the whole protocol --------------------------------------------------------------


def test_protocol_embeds_only_base_clips_and_shots_of_the_training_split():
    words = [f"w{i}" for i in range(8)]
    protocol = Protocol(base_classes=4, ways=1, shots=2, sessions=3, episodes=3)  # 6 words
    order = ["w5", "w0", "w7", "w2", "w1", "w6"]  # w3, w4 unused
    train = make_split([i % 8 for i in range(80)])
    test = make_split([i % 8 for i in range(40)])
    seen_rows = {"train": set(), "test": set()}

    def perfect(split, rows):  # one-hot of the word: every prototype is exact
        seen_rows["train" if split is train else "test"].update(rows.tolist())
        return torch.nn.functional.one_hot(split.labels[rows], 8).float()

    result = fskil.run_protocol(perfect, train, test, order, words, protocol, seed=0)
    ids = fskil.class_ids(order, words)
    base = {r for r in range(80) if train.labels[r].item() in ids[:4]}
    shots = {int(c[4:]) for episode in result.shots for c in episode}
    assert seen_rows["train"] == base | shots
    assert {train.labels[r].item() for r in shots} == set(ids[4:])
    assert all(len(episode) == 2 * 2 for episode in result.shots)
    assert {test.labels[r].item() for r in seen_rows["test"]} == set(ids)
    assert result.order == order and result.seed == 0
    assert len(result.per_episode) == 3 and len(result.per_session) == 3
    assert result.per_session[0] == {"overall": 1.0, "seen": 1.0, "unseen": None,
                                     "harmonic": None}
    assert result.headline == {"mean_acc": 1.0, "last_acc": 1.0, "last_harmonic": 1.0}


def test_logmel_baseline_beats_chance_on_the_small_corpus(small_prepared):
    data = load_prepared(small_prepared, splits=("train", "test"))
    train, test = data.splits["train"], data.splits["test"]
    order = fskil.default_class_order(data.labels)
    protocol = Protocol(shots=3, episodes=3)  # the small corpus has 4 training clips a word
    result = fskil.logmel_baseline(train, test, order, data.labels, protocol, seed=0)
    chance = [1 / (20 + 3 * s) for s in range(6)]
    assert result.headline["mean_acc"] > 2 * sum(chance) / 6
    assert result.headline["last_acc"] > 2 * chance[-1]
    assert result.per_session[0]["unseen"] is None
    assert all(s["harmonic"] is not None for s in result.per_session[1:])

    # the features as prepared: standardising each mel bin (as training does) is undone
    speech = train.features["speech"].reshape(-1, 40)
    mean, std = speech.mean(0), speech.std(0)

    def standardised(split):
        return dataclasses.replace(split, scale={name: (mean, std) for name in FEATURES})

    again = fskil.logmel_baseline(standardised(train), standardised(test), order, data.labels,
                                  protocol, seed=0, standardised_with=(mean, std))
    assert again.headline == pytest.approx(result.headline, abs=1e-6)
    by_hand = fskil.run_protocol(lambda split, rows: split.take(rows, ("speech",))[0].mean(1),
                                 train, test, order, data.labels, protocol, seed=0)
    assert result.headline == by_hand.headline  # prototypes of raw time-averaged log-mels
    with pytest.MonkeyPatch.context() as patch:  # read a few clips at a time: the same
        patch.setattr(fskil, "BASELINE_CHUNK", 7)
        chunked = fskil.logmel_baseline(train, test, order, data.labels, protocol, seed=0)
    assert chunked.headline == pytest.approx(result.headline, abs=1e-6)


def test_base_training_reads_no_novel_clip(small_prepared):
    """What the training loop reads under --protocol fskil: every row of every batch of an
    epoch, its shuffled partners and the feature statistics come from base words only."""
    import workers.train as wt
    from workers.config import RunConfig
    from workers.sampler import epoch_batches

    cfg = RunConfig(data=str(small_prepared), protocol="fskil", batch_size=32,
                    clips_per_class=2, workers=2, shots=3)
    data = load_prepared(small_prepared)
    full = data.splits["train"]
    words = wt.Words(cfg, data.labels, full.labels)
    base_ids = fskil.class_ids(words.order[:cfg.base_classes], data.labels)
    trained = words.trained(full)
    assert words.classes == 20 and set(trained.labels.tolist()) == set(range(20))

    # every clip's features say its word, so what gather_batch reads shows the words read
    coded = dataclasses.replace(full, features={
        name: full.labels[:, None, None].float().expand(-1, 101, 40) for name in FEATURES})
    coded_trained = words.trained(coded)
    ctx = wt.RankContext(0, 2, torch.device("cpu"))
    read = set()
    for batch in epoch_batches(trained.labels.numpy(), classes_per_batch=16, clips_per_class=2,
                               seed=0, epoch=0):
        for rank in range(2):
            got = wt.gather_batch(coded_trained, batch.for_rank(rank, 2), ctx)
            read |= {int(word) for x in got.features for word in x[:, 0, 0].tolist()}
            # the shuffled partners are clips of the same batch
            assert set(got.formant_partner.tolist()) <= set(range(len(got.labels)))
    assert read and read <= set(base_ids)

    stats = wt.FeatureNorm.fit(trained).stats
    base_rows = torch.isin(full.labels, torch.tensor(base_ids))
    for name in FEATURES:
        x = full.features[name][base_rows].reshape(-1, 40).double()
        torch.testing.assert_close(stats[name][0], x.mean(0).float())
        torch.testing.assert_close(stats[name][1], x.std(0).float())
        everything = full.features[name].reshape(-1, 40)
        assert not torch.allclose(stats[name][0], everything.mean(0))  # not all words'
