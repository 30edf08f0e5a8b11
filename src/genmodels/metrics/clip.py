"""In-domain contrastive judges for text-to-image: does a sample show what its prompt says?

No OpenAI CLIP weights can be had offline, and they would judge 28 x 28 digits poorly anyway. So
each built-in image dataset gets its own small image-text model, ``clip_<dataset>`` (e.g.
``clip_mnist``), trained deterministically on that dataset's training split and its captions
(``genmodels.data.captions``), in the manner of CLIP (Radford et al. 2021): a small CNN maps an
image to 384 numbers, a learned 2-layer head maps the frozen MiniLM's sentence vector
(``nn.text_encoder``) to 384 numbers, both L2-normalised, and a learned temperature scales
their cosines. It is *not* CLIP and is always named for its dataset: its scores say how well
samples match their prompts as far as a judge trained on that dataset's captions can tell, and
are comparable only between runs judged by the same ``clip_<dataset>``.

Training: symmetric InfoNCE over a batch of B (image x_i, caption c_i) pairs, with image and text
embeddings u_i, v_j and logits l_ij = s <u_i, v_j> (s = exp(logit_scale), init 1/0.07, at most 100):

    L = 1/2 [ CE(l_i., p_i.) + CE(l_.j, q_.j) ]   averaged over rows i and columns j
    p_ij = P_ij / sum_j P_ij,   q_ij = P_ij / sum_i P_ij,   P_ij = [c_j is a caption of x_i]

With one caption per item and distinct texts P = I and this is CLIP's loss. Here captions repeat
(terse MNIST: hundreds of "7"s per epoch), and one-hot targets would call the other 7 in the
batch a wrong match for "7": P_ij = 1 whenever c_j is one of item i's phrasings (in particular
when c_j and c_i are the same text), so every true pair in the batch is a positive.

The judge reads the union of the ``phrasing="train"`` and ``"heldout"`` phrasings with
``holdout=False``: it has seen every phrasing and attribute combination a prompt may use.

Metrics, over N (sample, prompt) pairs with judge embeddings u_i (images) and v_i (prompts):

    clip_score  = 1/N sum_i 100 max(cos(u_i, v_i), 0)         CLIPScore (Hessel et al. 2021, w = 100)
    r_precision = 1/N sum_i [cos(u_i, v_i) > max_k cos(u_i, v_jk)]
                  j_1..j_R: R = 9 prompts drawn at random among those whose text differs from prompt i

(chance: 1 / (R + 1) = 10 %; R-precision as in AttnGAN, Xu et al. 2018). Only identical texts
are excluded: a distractor that says the same in other words (terse "a 7" against "7") is a
rival, and the real-pair ceiling shows what that costs (MNIST's terse phrasings: 0.75, one
phrasing per digit: 0.99). torchmetrics' CLIPScore
clamps the *mean* at 0 instead of each pair; the two agree unless some cosine is negative. The
ceiling of both, real test images with one of their own captions each, is measured when the
judge is built and kept with it (``clip_retrieval_ceiling``), so a report can say "samples 0.62,
real pairs 0.81".

    judge = clip_net("mnist")                       # trained on first use (~1 min), then loaded
    u = judge.image_embeddings(samples)             # [N, 384], samples [N, 1, 28, 28] in [-1, 1]
    v = judge.text_embeddings(prompts)              # [N, 384]
    clip_score(u, v), r_precision(u, v, prompts, seed=0)
    clip_retrieval_ceiling("mnist")                 # ClipScores(clip_score=..., r_precision=...)

Cached as ``$GENMODELS_CACHE/clip/clip_<dataset>-<style>.safetensors`` with its recipe, the
SHA-256 of its data and captions, the MiniLM's id and the ceilings; rebuilt when any changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data import Dataset, load_dataset
from ..errors import DataError
from ..paths import cache_dir
from ..progress import progress_bar
from ..train.checkpoint import atomic_write
from .features import data_hash, random_affine, weights_hash

__all__ = ["CLIP_RECIPES", "ClipJudge", "ClipNet", "ClipRecipe", "ClipScores", "build_clip_net", "clip_net",
           "clip_net_path", "clip_retrieval_ceiling", "clip_score", "multi_positive_infonce", "r_precision",
           "score_samples"]

VERSION = 1  # bump when the architecture or training changes: old cache files are then ignored
TEXT_DIM = 384  # MiniLM's sentence vector
EMBED_DIM = 384
R_OTHERS = 9  # r_precision's distractors: chance is 1 / (R_OTHERS + 1)


class ClipNet(nn.Module):
    """Image tower: ``stages`` conv-conv-maxpool stages (``width``, 2 ``width``, 4 ``width``
    channels; enough that the map is at most 8 x 8), a 256-unit ReLU layer and a linear projection
    to ``dim``. Text tower: a 2-layer MLP on MiniLM's pooled vector. Both L2-normalised;
    ``logit_scale`` is CLIP's learned log temperature."""

    def __init__(self, *, in_channels=1, image_size=28, width=16, dim=EMBED_DIM, text_dim=TEXT_DIM):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, width=width, dim=dim,
                           text_dim=text_dim)

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        layers, c, side = [], in_channels, image_size
        if image_size > 32:  # a strided stem: 64 px emoji cost 4x less and keep what 2 x 2 patches show
            layers, c, side = [nn.Conv2d(c, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU()], width, image_size // 2
        stages = max(1, math.ceil(math.log2(side / 8)))
        if side % 2**stages:
            raise ValueError(f"ClipNet needs image_size divisible by 2**{stages} ({stages} poolings), "
                             f"got {image_size}")
        for k in range(stages):
            layers += [*conv(c, width * 2**k), *conv(width * 2**k, width * 2**k), nn.MaxPool2d(2)]
            c = width * 2**k
        side //= 2**stages
        self.image = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * side * side, 256), nn.ReLU(),
                                   nn.Linear(256, dim))
        self.text = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: Tensor) -> Tensor:
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.text(pooled), dim=-1)

    def forward(self, x: Tensor, pooled: Tensor) -> Tensor:
        """Logits [B, B]: scaled cosines of image i and text j."""
        scale = self.logit_scale.clamp(0, math.log(100)).exp()  # CLIP's clamp: a temperature >= 0.01
        return scale * self.encode_image(x) @ self.encode_text(pooled).T


def multi_positive_infonce(logits: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE with soft targets: ``logits`` [B, B] (image i, text j), ``positives``
    [B, B] bool, True where text j is a caption of image i (the diagonal always). Each row (image
    -> texts) and column (text -> images) is a cross-entropy against its positives, uniformly
    weighted; with ``positives`` = I this is CLIP's loss."""
    p = positives.to(logits.dtype)
    return 0.5 * (F.cross_entropy(logits, p / p.sum(1, keepdim=True))
                  + F.cross_entropy(logits.T, p.T / p.T.sum(1, keepdim=True)))


@dataclass(frozen=True)
class ClipRecipe:
    """How a dataset's judge is trained: captions of ``style``; Adam at ``lr`` with cosine decay,
    ``epochs`` over the first ``max_images`` training images in batches of ``batch_size``
    (shuffled by ``seed``); random shifts of up to ``shift`` pixels (scale, rotation: relative,
    degrees; ``fill``: the background a shift uncovers)."""

    style: str
    epochs: int
    width: int = 16
    lr: float = 2e-3
    batch_size: int = 128
    max_images: int | None = None
    shift: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    fill: float = -1.0
    seed: int = 0
    min_r_precision: float = 0.0  # the build fails loudly below this real-pair test r_precision


# No rotation or scaling for MNIST and Fashion: descriptive captions state slant, thickness and
# size measured from each image, and an augmentation would change what they state.
# Training seconds on 2 CPU cores shared with other jobs (placeholder captions): mnist 67-118,
# fashion 88, digits 5-10, emoji 20-50 when the cores were quiet, 160-410 when oversubscribed
# (20 epochs: r_precision 0.759 instead of 0.751; width 24 or batches of 256: no better).
CLIP_RECIPES = {
    "mnist": ClipRecipe("descriptive", epochs=12, shift=1, min_r_precision=0.5),
    "fashion": ClipRecipe("descriptive", epochs=3, max_images=15000, shift=1, min_r_precision=0.5),
    "emoji": ClipRecipe("names", epochs=10, batch_size=128, shift=4, scale=0.1, fill=1.0, min_r_precision=0.3),
    "digits": ClipRecipe("terse", epochs=6, min_r_precision=0.5),
}


@dataclass(frozen=True)
class ClipScores:
    """CLIPScore (0..100) and R-precision (chance 1 / (others + 1)) of ``n`` pairs."""

    clip_score: float
    r_precision: float
    n: int


# ---- the metrics ----------------------------------------------------------------------------
def clip_score(image_emb: Tensor, text_emb: Tensor) -> float:
    """Mean over pairs i of 100 max(cos(image_emb_i, text_emb_i), 0) (CLIPScore, w = 100)."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise DataError(f"clip_score needs image and text embeddings of one shape [N, D], got "
                        f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    cos = F.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
    return (100 * cos.clamp_min(0)).mean().item()


def r_precision(image_emb: Tensor, text_emb: Tensor, texts, *, others: int = R_OTHERS, seed: int = 0) -> float:
    """Share of images i whose own prompt ``texts[i]`` is closer (cosine) than each of ``others``
    prompts drawn without replacement (generator seeded by ``seed``) among those whose text
    differs from ``texts[i]``; a tie counts as a miss."""
    texts = list(texts)
    n = len(texts)
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2 or len(image_emb) != n:
        raise DataError(f"r_precision needs image and text embeddings [N, D] and N texts, got "
                        f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)} and {n} texts")
    ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    tid = torch.tensor([ids[t] for t in texts])
    u, v = F.normalize(image_emb.double(), dim=-1), F.normalize(text_emb.double(), dim=-1)
    fewest = n - torch.bincount(tid).max().item()
    if fewest < others:
        raise DataError(f"r_precision needs at least {others} prompts of another text for every prompt; "
                        f"these {n} have as few as {fewest}")
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for start in range(0, n, 256):  # keys [rows, N]: the distractors are the rows' smallest valid keys
        rows = torch.arange(start, min(start + 256, n))
        keys = torch.rand(len(rows), n, generator=generator, dtype=torch.float64)
        keys[tid[rows, None] == tid[None, :]] = math.inf
        pick = keys.topk(others, dim=1, largest=False).indices  # [rows, others]
        own = (u[rows] * v[rows]).sum(-1)
        rivals = torch.einsum("rd,rkd->rk", u[rows], v[pick])
        hits += (own > rivals.max(1).values).sum().item()
    return hits / n


# ---- the judge ------------------------------------------------------------------------------
class ClipJudge:
    """A trained ``ClipNet`` for scoring: ``image_embeddings(x)`` [N, 384] (images [N, C, H, W]
    in [-1, 1] of the dataset's shape), ``text_embeddings(texts)`` [N, 384] (MiniLM, cached, then
    the head); ``name`` (clip_mnist), ``info`` (recipe, hashes, ceilings)."""

    def __init__(self, name: str, net: ClipNet, info: dict, *, batch_size: int = 500):
        self.name, self.net, self.info, self.batch_size = name, net.eval(), dict(info), batch_size
        c, s = net.config["in_channels"], net.config["image_size"]
        self.image_shape = (c, s, s)

    @torch.inference_mode()
    def image_embeddings(self, x: Tensor, *, progress: bool = False) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise DataError(f"{self.name} judges images [N, {', '.join(map(str, self.image_shape))}] "
                            f"(its dataset's), got {tuple(x.shape)}")
        batches = range(0, len(x), self.batch_size)
        device = self.net.logit_scale.device
        out = [self.net.encode_image(x[i:i + self.batch_size].to(device, torch.float32)).cpu()
               for i in progress_bar(batches, desc=f"{self.name} images", disable=not progress, leave=False)]
        return torch.cat(out) if out else torch.empty(0, self.net.config["dim"])

    @torch.inference_mode()
    def text_embeddings(self, texts) -> Tensor:
        from ..nn.text_encoder import encode_texts

        texts = [texts] if isinstance(texts, str) else list(texts)
        unique = sorted(set(texts))
        row = {t: i for i, t in enumerate(unique)}
        pooled = encode_texts(unique).pooled
        return self.net.encode_text(pooled)[torch.tensor([row[t] for t in texts], dtype=torch.long)]

    def scores(self, x: Tensor, texts, *, others: int = R_OTHERS, seed: int = 0) -> ClipScores:
        """Both metrics of images ``x`` against their prompts ``texts``."""
        u, v = self.image_embeddings(x), self.text_embeddings(texts)
        return ClipScores(clip_score(u, v), r_precision(u, v, texts, others=others, seed=seed), len(u))

    def __repr__(self):
        return f"ClipJudge({self.name!r}, image_shape={self.image_shape})"


def clip_net_path(dataset: str) -> Path:
    return cache_dir() / "clip" / f"clip_{dataset}-{_recipe(dataset).style}.safetensors"


def _recipe(dataset: str) -> ClipRecipe:
    if dataset not in CLIP_RECIPES:
        raise DataError(f"no clip judge recipe for dataset {dataset!r}; datasets with one: {', '.join(CLIP_RECIPES)}")
    return CLIP_RECIPES[dataset]


@dataclass(frozen=True)
class _Data:
    """A split's images with every item's phrasings (``choices`` [N, K] rows of ``texts``, padded
    by repetition; ``counts`` [N]) and the MiniLM sentence vectors ``pooled`` [U, 384] of ``texts``."""

    images: Dataset
    phrasings: tuple[tuple[str, ...], ...]
    texts: tuple[str, ...]
    choices: Tensor
    counts: Tensor


def _split_data(dataset: str, split: str, phrasing: str | None = None) -> _Data:
    """``split``'s images and captions in the recipe's style, ``holdout=False``: the phrasings of
    ``phrasing``, or (None) the union of the train and held-out ones."""
    from ..data.captions import caption_set

    recipe = _recipe(dataset)
    images = load_dataset(dataset, split=split)
    if split == "train" and recipe.max_images:
        n = recipe.max_images
        images = dataclasses.replace(images, x=images.x[:n], y=images.y[:n], captions=images.captions[:n])
    sets = [caption_set(images, recipe.style, phrasing=p, holdout=False).texts
            for p in ([phrasing] if phrasing else ["train", "heldout"])]
    phrasings = tuple(tuple(dict.fromkeys(t for s in sets for t in s[i])) for i in range(len(images.x)))
    if len(phrasings) != len(images.x) or not all(phrasings):
        raise DataError(f"the {recipe.style} captions of {dataset} {split} do not give every item a caption")
    texts = tuple(sorted({t for item in phrasings for t in item}))
    row = {t: i for i, t in enumerate(texts)}
    width = max(len(item) for item in phrasings)
    choices = torch.tensor([[row[item[k % len(item)]] for k in range(width)] for item in phrasings])
    return _Data(images, phrasings, texts, choices, torch.tensor([len(item) for item in phrasings]))


def _minilm_id() -> str:
    """``FrozenTextEncoder.id`` without loading the model: a hash of its weights file."""
    from ..nn.text_encoder import _file_hash, minilm_dir

    return f"minilm-{_file_hash(minilm_dir() / 'model.safetensors')[:16]}"


def _data_key(train: _Data, test: _Data) -> str:
    """SHA-256 of the training and test images, labels and every item's phrasings."""
    h = hashlib.sha256()
    for d in (train, test):
        h.update(data_hash(d.images).encode())
        h.update(json.dumps(d.phrasings).encode())
    return h.hexdigest()


def build_clip_net(dataset: str, *, progress=True) -> tuple[ClipNet, dict]:
    """Train ``dataset``'s judge by its recipe (deterministic for a seed on one machine and thread
    count) and return it with its info: recipe, data hash, MiniLM id, ceilings, seconds."""
    from ..nn.text_encoder import encode_texts

    recipe = _recipe(dataset)
    start = time.perf_counter()
    train = _split_data(dataset, "train")
    test = _split_data(dataset, "test")
    pooled = encode_texts(train.texts, progress=progress).pooled
    torch.manual_seed(recipe.seed)
    x = train.images.x
    net = ClipNet(in_channels=x.shape[1], image_size=x.shape[2], width=recipe.width)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    n, b = len(x), min(recipe.batch_size, len(x))
    steps = recipe.epochs * (n // b)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    order_rng = torch.Generator().manual_seed(recipe.seed)
    caption_rng = torch.Generator().manual_seed(recipe.seed + 1)
    augment_rng = torch.Generator().manual_seed(recipe.seed + 2)
    net.train()
    bar = progress_bar(total=steps, desc=f"training clip_{dataset}", disable=not progress, leave=False,
                       mininterval=1.0)
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=order_rng)
        for k in range(n // b):  # the last incomplete batch is dropped
            index = order[k * b:(k + 1) * b]
            counts = train.counts[index]
            pick = (torch.rand(b, generator=caption_rng) * counts).long().clamp_max(counts - 1)
            caption = train.choices[index, pick]  # [B] rows of train.texts
            positives = (train.choices[index][:, :, None] == caption[None, None, :]).any(1)  # [B, B]
            images = random_affine(x[index], recipe, generator=augment_rng)
            loss = multi_positive_infonce(net(images, pooled[caption]), positives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net.eval()
    info = {"dataset": dataset, "name": f"clip_{dataset}", "style": recipe.style, "version": VERSION,
            "recipe": recipe.__dict__, "config": net.config, "data_sha256": _data_key(train, test),
            "text_encoder": _minilm_id(), "n_train": n, "n_test": len(test.images.x),
            "train_seconds": round(time.perf_counter() - start, 1)}
    judge = ClipJudge(info["name"], net, info)
    info["ceiling"] = {p: _ceiling(judge, dataset, p).__dict__ for p in ("train", "heldout")}
    info["test_top1"] = _top1(judge, test)
    return net, info


def _top1(judge: ClipJudge, test: _Data) -> float:
    """Share of test images whose nearest text, among every test caption, is one of their own."""
    nearest = (judge.image_embeddings(test.images.x) @ judge.text_embeddings(test.texts).T).argmax(1)
    return (test.choices == nearest[:, None]).any(1).double().mean().item()


def _ceiling(judge: ClipJudge, dataset: str, phrasing: str, *, seed: int = 0) -> ClipScores:
    """The judge's scores of real test images, each with one of its ``phrasing`` captions (drawn by
    ``seed``), against the others' (a prompt set as ``prompt_set`` makes one)."""
    test = _split_data(dataset, "test", phrasing)
    generator = torch.Generator().manual_seed(seed)
    pick = (torch.rand(len(test.counts), generator=generator) * test.counts).long().clamp_max(test.counts - 1)
    prompts = [test.texts[i] for i in test.choices[torch.arange(len(pick)), pick].tolist()]
    return judge.scores(test.images.x, prompts, seed=seed)


def _save(net: ClipNet, info: dict, path: Path) -> None:
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"info": json.dumps(info)}))


def _load(path: Path) -> tuple[ClipNet, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["info"])
        net = ClipNet(**info["config"])
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
        raise DataError(f"{path} is not a genmodels clip judge file ({err})") from None
    return net.eval(), info


def _stale(info: dict, dataset: str) -> bool:
    """Whether a cached judge was built by another version, recipe, data, captions or MiniLM."""
    expected = {"version": VERSION, "recipe": _recipe(dataset).__dict__, "text_encoder": _minilm_id(),
                "data_sha256": _data_key(_split_data(dataset, "train"), _split_data(dataset, "test"))}
    return any(info.get(k) != v for k, v in expected.items())


_LOADED: dict = {}  # (path, file mtime, recipe) -> ClipJudge: the metrics ask for the same judge again and again


def clip_net(dataset: str, *, rebuild=False, progress=True) -> ClipJudge:
    """``dataset``'s judge ``clip_<dataset>``: loaded from the cache, or trained and cached when
    missing, damaged, stale or ``rebuild``. Needs the text extra (the frozen MiniLM)."""
    _recipe(dataset)  # a dataset without a recipe fails here, before any loading
    path = clip_net_path(dataset)
    if path.is_file() and not rebuild:
        key = (str(path), path.stat().st_mtime_ns, CLIP_RECIPES[dataset])
        if key in _LOADED:
            return _LOADED[key]
        try:
            net, info = _load(path)
        except DataError:  # a damaged cache file costs only a rebuild
            info = None
        if info is not None and not _stale(info, dataset):
            judge = _LOADED[key] = ClipJudge(info["name"], net, {**info, "weights_sha256": weights_hash(net)})
            return judge
    net, info = build_clip_net(dataset, progress=progress)
    recipe = CLIP_RECIPES[dataset]
    got = info["ceiling"]["train"]["r_precision"]
    if got < recipe.min_r_precision:
        raise DataError(f"clip_{dataset} reached a real-pair test r_precision of {got:.3f}, below its "
                        f"{recipe.min_r_precision} target; not cached")
    try:
        _save(net, info, path)
    except OSError as err:  # an unwritable cache only costs retraining next time
        info["cache_error"] = str(err)
    return ClipJudge(info["name"], net, {**info, "weights_sha256": weights_hash(net)})


def clip_retrieval_ceiling(dataset: str, *, phrasing: str = "train") -> ClipScores:
    """clip_score and r_precision of ``dataset``'s real test images with one of their own
    ``phrasing`` captions each: what a perfect generator would score (read from the judge's info)."""
    c = clip_net(dataset, progress=False).info["ceiling"][phrasing]
    return ClipScores(c["clip_score"], c["r_precision"], c["n"])


def score_samples(dataset: str, samples: Tensor, prompts, *, metrics=("clip_score", "r_precision"), seed: int = 0,
                  others: int = R_OTHERS, progress: bool = False) -> dict:
    """The registry's view: ``metrics`` (clip_score, r_precision) of ``samples`` drawn with
    ``prompts`` (one each), each with its real-pair ceiling ``<metric>_real``, and ``clip_judge``
    (the judge's name, clip_<dataset>)."""
    prompts = list(prompts)
    if len(prompts) != len(samples):
        raise DataError(f"{len(samples)} samples but {len(prompts)} prompts; the clip metrics need one prompt per sample")
    judge = clip_net(dataset, progress=progress)
    u, v = judge.image_embeddings(samples, progress=progress), judge.text_embeddings(prompts)
    real, out = judge.info["ceiling"]["train"], {}
    for name in metrics:
        out[name] = clip_score(u, v) if name == "clip_score" else r_precision(u, v, prompts, others=others, seed=seed)
        out[f"{name}_real"] = real[name]
    return {**out, "clip_judge": judge.name}
