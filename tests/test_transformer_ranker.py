"""ped_fast.integrations.transformer_ranker: PED before transformer-ranker's
estimators, on embeddings and within TransformerRanker(...).run(...),
against the installed library (the test extra installs it), offline: the
language models are tiny random BERTs saved to a temporary folder with a
word-level tokenizer built here.

The examples of docs/integrations.md §2 run here too.

Tolerances: none. The adapter runs the same ped() and the same estimator
code on the same numbers as the expected values, in the same order, so
scores are compared exactly.
"""
import pathlib
import random
import re

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_ranker import Embedder, TransformerRanker
from transformer_ranker.estimators import HScore, LogME, NearestNeighbors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

import ped_fast
from ped_fast.integrations.transformer_ranker import ESTIMATORS, PEDEstimator, add_ped_estimators

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORDS = "good bad fine awful great poor nice terrible fair dull".split()


def embeddings(seed=0, n=90, dim=12, classes=3):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    means = torch.randn(classes, dim, generator=generator)
    x = means[labels] + 2.0 * torch.randn(n, dim, generator=generator)
    return x.float(), labels


@pytest.mark.parametrize("name", ["hscore", "logme", "knn"])
def test_ped_estimator_on_embeddings(name):
    x, y = embeddings()
    moved = ped_fast.ped(x, y, rescale="self")
    assert moved.steps > 0
    plain = ESTIMATORS[name]().fit(embeddings=x, labels=y)
    expected = ESTIMATORS[name]().fit(embeddings=moved.features, labels=y)
    estimator = PEDEstimator(name)
    assert estimator.fit(embeddings=x, labels=y) == expected == estimator.score
    assert expected != plain
    assert torch.equal(estimator.result.features, moved.features)
    assert torch.equal(x, embeddings()[0])  # the caller's embeddings are left as they were


def test_ped_estimator_reference_and_options():
    x, y = embeddings()
    g = torch.randn(50, 12, generator=torch.Generator().manual_seed(1)) + 0.3
    wrapped = NearestNeighbors(k=5)
    estimator = PEDEstimator(wrapped, reference=g, max_steps=2)
    moved = ped_fast.ped(x, y, reference=g, max_steps=2).features
    assert estimator.fit(embeddings=x, labels=y, distance_metric="cosine") == NearestNeighbors(k=5).fit(
        embeddings=moved, labels=y, distance_metric="cosine")
    assert estimator.estimator is wrapped and estimator.result.steps <= 2
    mean, std = g.double().mean(0), g.double().std(0, unbiased=False)
    assert PEDEstimator("logme", reference=(mean, std)).fit(embeddings=x, labels=y) == LogME().fit(
        embeddings=ped_fast.ped(x, y, reference=(mean, std)).features, labels=y)


def test_ped_estimator_half_precision_embeddings():
    """A model loaded in half precision gives bfloat16 embeddings: moved in
    float32, as transformer-ranker's estimators widen them themselves."""
    x, y = embeddings()
    half = x.to(torch.bfloat16)
    assert PEDEstimator("hscore").fit(embeddings=half, labels=y) == HScore().fit(
        embeddings=ped_fast.ped(half.float(), y, rescale="self").features, labels=y)


@pytest.mark.parametrize("call, error, message", [
    (lambda: PEDEstimator("lda"), ValueError,
     r"estimator must be one of 'hscore', 'logme', 'knn' or a transformer-ranker Estimator, got 'lda'"),
    (lambda: PEDEstimator(HScore), TypeError, r"estimator must be one of .* got ABCMeta"),
    (lambda: PEDEstimator("logme", regression=True), ValueError, r"regression=True: PED .* needs class labels"),
    (lambda: PEDEstimator(LogME(regression=True)), ValueError, r"made for a regression task"),
    (lambda: PEDEstimator("hscore", inplace=True), TypeError,
     r"unexpected PED option 'inplace': expected some of .*max_steps"),
    (lambda: PEDEstimator("hscore", rescale="reference"), ValueError, r"rescale='reference' needs a reference"),
    (lambda: PEDEstimator("hscore", reference=np.zeros((4, 12)), rescale="self"), ValueError,
     r"reference is only used with rescale='reference', got rescale='self'"),
    (lambda: PEDEstimator("hscore", time_step=-1), ValueError, r"time_step"),
])
def test_ped_estimator_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.fixture(scope="module")
def language_models(tmp_path_factory):
    """Two tiny random BERTs (2 layers, hidden size 16) with a word-level
    tokenizer over WORDS, saved as transformer-ranker loads a model by
    name."""
    folder = tmp_path_factory.mktemp("language_models")
    vocabulary = {word: i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(vocabulary), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32)
        path = folder / f"tiny-bert-{seed}"
        BertModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def text_dataset(size=60):
    """`size` four-word texts in 3 classes, each class drawn from its own
    words with some shared ones."""
    rng = random.Random(0)
    texts, labels = [], []
    for i in range(size):
        label = i % 3
        pool = WORDS[3 * label:3 * label + 3] + WORDS[9:]
        texts.append(" ".join(rng.choice(pool) for _ in range(4)))
        labels.append(label)
    return Dataset.from_dict({"text": texts, "label": labels})


def layer_embeddings(ranker, model, layer_aggregator):
    """The embeddings run() scores for `model`, one N x D tensor per layer,
    made as run() makes them."""
    embedder = Embedder(model=model, layer_ids="0" if layer_aggregator == "lastlayer" else "all",
                        layer_mean="mean" in layer_aggregator, sentence_pooling="mean", device="cpu")
    per_text = embedder.embed(ranker.texts, batch_size=16, show_progress=False)
    return [torch.stack([text[layer] for text in per_text]) for layer in range(len(per_text[0]))]


@pytest.mark.parametrize("layer_aggregator", ["layermean", "bestlayer"])
def test_run_with_ped_estimators(language_models, layer_aggregator):
    ranker = TransformerRanker(text_dataset())
    assert add_ped_estimators(ranker) == ("ped_hscore", "ped_logme", "ped_knn")
    result = ranker.run(language_models, estimator="ped_hscore", layer_aggregator=layer_aggregator, batch_size=16,
                        device="cpu")
    assert result.metric == "ped_hscore" and list(result.scores) == language_models
    aggregate = max if layer_aggregator == "bestlayer" else (lambda scores: scores[-1])
    for model in language_models:
        layers = layer_embeddings(ranker, model, layer_aggregator)
        assert len(layers) == (2 if layer_aggregator == "bestlayer" else 1)
        expected = aggregate([HScore().fit(embeddings=ped_fast.ped(x, ranker.labels, rescale="self").features,
                                           labels=ranker.labels) for x in layers])
        plain = aggregate([HScore().fit(embeddings=x, labels=ranker.labels) for x in layers])
        assert result.scores[model] == expected != plain


def test_add_ped_estimators_options_and_errors(language_models):
    ranker = TransformerRanker(text_dataset())
    assert add_ped_estimators(ranker, "knn", max_steps=1) == ("ped_knn",)
    estimator = ranker.transferability_metrics["ped_knn"](regression=False)
    assert isinstance(estimator.estimator, NearestNeighbors) and estimator.ped_options == {"max_steps": 1,
                                                                                           "rescale": "self"}
    assert set(ranker.transferability_metrics) == {"hscore", "logme", "knn", "ped_knn"}
    with pytest.raises(ValueError, match=r"regression task: PED .* run the estimator without the ped_ prefix"):
        ranker.transferability_metrics["ped_knn"](regression=True)
    with pytest.raises(TypeError, match=r"add_ped_estimators takes no reference"):
        add_ped_estimators(ranker, reference=np.zeros((3, 16)))
    with pytest.raises(ValueError, match=r"estimators must name some of the ranker's estimators 'logme', 'hscore', "
                                         r"'knn', 'ped_knn', got \['lda'\]"):
        add_ped_estimators(ranker, ["lda"])
    with pytest.raises(TypeError, match=r"ranker must be a transformer_ranker.TransformerRanker"):
        add_ped_estimators(object())
    with pytest.raises(TypeError, match=r"unexpected PED option 'steps'"):
        add_ped_estimators(ranker, steps=3)


def doc_blocks():
    """The python blocks of docs/integrations.md's transformer-ranker
    section (§2)."""
    text = (ROOT / "docs" / "integrations.md").read_text()
    section = text[text.index("## 2. transformer-ranker"):]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_documented_examples_run(language_models, capsys):
    on_embeddings, with_reference, dataset_block, in_run = doc_blocks()
    assert "load_dataset" in dataset_block  # the one block not run: it downloads a dataset
    namespace = {}
    exec(on_embeddings, namespace)
    exec(with_reference, namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["hscore", "hscore", "with"]
    assert printed[1].endswith(f"({namespace['estimator'].result.steps} PED steps)")
    namespace = {"dataset": text_dataset(150), "language_models": language_models}
    exec(in_run, namespace)
    assert namespace["results"].metric == "ped_hscore" and set(namespace["results"].scores) == set(language_models)
    ranking = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Rank ")]
    assert len(ranking) == 2
