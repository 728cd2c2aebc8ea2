"""Models for the verification tests (`sl.verify`): references rebuilt in plain torch as their
originals compute, and destinations written independently, as a new user would, with their own
names and idioms. Tiny shapes, random values."""

from __future__ import annotations

import torch
import torch.nn as nn


class FacenetRNet(nn.Module):
    """facenet-pytorch's RNet, as the original computes it: it flattens in (W, H, C) order."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, kernel_size=3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, kernel_size=3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, kernel_size=2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.softmax5_1 = nn.Linear(128, 2), nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class FacenetONet(nn.Module):
    """facenet-pytorch's ONet, as the original computes it: it flattens in (W, H, C) order."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, kernel_size=3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, kernel_size=3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, kernel_size=3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, kernel_size=2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class CropNet(nn.Module):
    """A user's rewrite of RNet / ONet: a Sequential of conv stages, ``nn.Flatten`` (C, H, W), heads."""

    def __init__(self, stages: list[tuple[int, int, int, int | None]], flat: int, hidden: int, heads: dict[str, int]):
        super().__init__()
        self.features = nn.Sequential()
        for i, (c_in, c_out, kernel, pool) in enumerate(stages, 1):
            self.features.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, kernel))
            self.features.add_module(f"act{i}", nn.PReLU(c_out))
            if pool:
                self.features.add_module(f"pool{i}", nn.MaxPool2d(pool, 2, ceil_mode=True))
        self.flatten = nn.Flatten()
        self.fc, self.act = nn.Linear(flat, hidden), nn.PReLU(hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})

    def forward(self, x):
        x = self.act(self.fc(self.flatten(self.features(x))))
        outputs = [head(x) for name, head in self.heads.items() if name != "score"]
        return (*outputs, self.heads["score"](x).softmax(dim=1))


def crop_rnet() -> CropNet:
    return CropNet([(3, 28, 3, 3), (28, 48, 3, 3), (48, 64, 2, None)], 576, 128, {"box": 4, "score": 2})


def crop_onet() -> CropNet:
    stages = [(3, 32, 3, 3), (32, 64, 3, 3), (64, 64, 3, 2), (64, 128, 2, None)]
    return CropNet(stages, 1152, 256, {"box": 4, "landmarks": 10, "score": 2})


def facenet_to_crop(stages: int, heads: dict[str, str]):
    """The user's hand mapping from facenet's names to `CropNet`'s (a callable ``rename``)."""

    def rename(path: str) -> str:
        module, _, name = path.rpartition(".")
        if module.startswith("conv"):
            return f"features.{module}.{name}"
        if module.startswith("prelu"):
            number = int(module.removeprefix("prelu"))
            return f"features.act{number}.{name}" if number <= stages else f"act.{name}"
        if module in heads:
            return f"heads.{heads[module]}.{name}"
        return f"fc.{name}"  # the dense layer after the flatten

    return rename


class ConvBNNet(nn.Module):
    """A reference with batch norms: conv, BN, ReLU twice, pooled, then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class UserConvBN(nn.Module):
    """The same network written by a user: stages of (conv, norm, act), a classifier."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()) for c in (3, 8)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.pool(x).flatten(1))


def keras_names(state: dict) -> dict:
    """`ConvBNNet`'s state with Keras' batch norm names (gamma, beta, moving_mean, moving_variance)."""
    names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    result = {}
    for path, tensor in state.items():
        module, _, name = path.rpartition(".")
        if module.startswith("bn") and name in names:
            name = names[name]
        if name != "num_batches_tracked":
            result[f"{module}.{name}"] = tensor
    return result


def keras_to_user(swap_statistics: bool):
    """The user's mapping from the Keras-named checkpoint onto `UserConvBN`; with `swap_statistics`
    the plausible slip of reading moving_mean as the variance and moving_variance as the mean."""
    statistics = {"moving_mean": "running_mean", "moving_variance": "running_var"}
    if swap_statistics:
        statistics = {"moving_mean": "running_var", "moving_variance": "running_mean"}
    names = {"gamma": "weight", "beta": "bias", **statistics}

    def rename(path: str) -> str:
        module, _, name = path.rpartition(".")
        if module == "fc":
            return f"classifier.{name}"
        index = int(module[-1]) - 1
        return f"stages.{index}.{0 if module.startswith('conv') else 1}.{names.get(name, name)}"

    return rename


def reference_to_user(path: str) -> str:
    """`ConvBNNet`'s names onto `UserConvBN`'s, for pairing modules."""
    module, _, name = path.rpartition(".")
    if module == "fc":
        return f"classifier.{name}"
    return f"stages.{int(module[-1]) - 1}.{0 if module.startswith('conv') else 1}.{name}"


def interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q / k rows in Meta's rotary layout (pairs interleaved), from transformers' (halves): the
    inverse of the permutation in transformers' convert_llama_weights_to_hf."""
    rows, columns = weight.shape
    return weight.view(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns)


def halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The permutation transformers' convert_llama_weights_to_hf applies: Meta's layout to halves."""
    rows, columns = weight.shape
    return weight.view(heads, rows // heads // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


class GatedFeedForward(nn.Module):
    """A user's T5 v1.1 feed-forward sublayer: RMS norm, gelu(gate) * up, down, residual."""

    def __init__(self, d: int, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(d))
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.eps = eps

    def forward(self, x):
        h = self.norm_weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return x + self.down(torch.nn.functional.gelu(self.gate(h), approximate="tanh") * self.up(h))


def t5_to_user(slip: bool) -> dict:
    """The user's mapping of transformers' T5LayerFF names; with `slip`, wi_0 read as the up projection."""
    gate, up = ("up", "gate") if slip else ("gate", "up")
    return {
        r"^layer_norm\.weight$": "norm_weight",
        r"^DenseReluDense\.wi_0\.": f"{gate}.",
        r"^DenseReluDense\.wi_1\.": f"{up}.",
        r"^DenseReluDense\.wo\.": "down.",
    }


class QuickGELUMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        h = self.c_fc(x)
        return self.c_proj(h * torch.sigmoid(1.702 * h))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(width), nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2, self.mlp = nn.LayerNorm(width), QuickGELUMLP(width, hidden)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class OpenAIStyleTextCLIP(nn.Module):
    """A user's CLIP text encoder in OpenAI's style (nn.MultiheadAttention blocks, quick GELU, the
    end-of-text token pooled as the highest id), with the projection as a Linear named ``proj``."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int, hidden: int, embed: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, hidden) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed, bias=False)

    def forward(self, ids):
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        mask = torch.full((length, length), float("-inf")).triu(1)
        for block in self.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return self.proj(x[torch.arange(x.shape[0]), ids.argmax(dim=-1)])


# transformers' CLIP text names onto OpenAIStyleTextCLIP's, for pairing modules
TRANSFORMERS_TO_OPENAI_STYLE = {
    r"^text_model\.embeddings\.token_embedding\.": "token_embedding.",
    r"^text_model\.embeddings\.position_embedding\.weight$": "positional_embedding",
    r"^text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.": r"resblocks.\1.attn.out_proj.",
    r"^text_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.": r"resblocks.\1.ln_\2.",
    r"^text_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.": r"resblocks.\1.mlp.c_fc.",
    r"^text_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.": r"resblocks.\1.mlp.c_proj.",
    r"^text_model\.final_layer_norm\.": "ln_final.",
    r"^text_projection\.weight$": "proj.weight",
}
