"""A realistic customer-service corpus for the benchmark.

What an operator's traffic looks like (issue 12): 1,000 customers, Chinese and ASCII text with
emoji and multi-line messages, lengths of 8 / 21 / 118 / 615 characters at p10 / p50 / p90 / max.
Lengths are drawn from a piecewise log-linear quantile function through those anchors, with a
fixed seed, so every run sends the same corpus; texts are cut from a pool of phrases a shop's
customers write. Pushes are built with the project's own ``PushBuilder`` (safe mode, XML).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from typing import Iterator

N_OPENIDS = 1000
#: (quantile, length in characters): the distribution the issue measured
LENGTH_ANCHORS = [(0.0, 1), (0.1, 8), (0.5, 21), (0.9, 118), (0.999, 400), (1.0, 615)]
MAX_LENGTH = 615

PHRASES = [
    "你好", "在吗？", "我的订单什么时候发货？", "订单号 2026113012345678", "怎么退货", "退款多久到账",
    "能开发票吗", "地址写错了，可以改吗？", "快递一直没更新😭", "谢谢！👍", "好的", "收到🙏",
    "hello", "Is this available in size M?", "order #A-88231 still not shipped",
    "尺码偏大还是偏小", "颜色和图片不一样", "能便宜点吗😂", "优惠券用不了", "物流显示已签收但我没收到",
    "please help!!!", "客服在吗", "我要投诉", "商品有瑕疵，附图片", "发什么快递？", "今天下单明天能到吗",
    "🎉🎉", "👨‍👩‍👧 家庭装有吗", "营业时间", "人工", "ok", "thx", "查一下物流 SF1234567890123",
    "第一次买，不太会用这个小程序", "积分怎么兑换", "会员续费失败了，扣了钱但没开通",
]


def _length_at(q: float) -> int:
    """Inverse CDF: log-linear between the anchors."""
    qs = [a[0] for a in LENGTH_ANCHORS]
    i = min(max(bisect_right(qs, q) - 1, 0), len(LENGTH_ANCHORS) - 2)
    (q0, l0), (q1, l1) = LENGTH_ANCHORS[i], LENGTH_ANCHORS[i + 1]
    t = 0.0 if q1 == q0 else (q - q0) / (q1 - q0)
    return max(1, min(MAX_LENGTH, round(math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))))))


def text_of_length(rng: random.Random, n: int) -> str:
    """Phrases joined by spaces, punctuation or newlines, cut to ``n`` code points."""
    parts: list[str] = []
    size = 0
    while size < n:
        p = rng.choice(PHRASES)
        sep = rng.choice(["", " ", "，", "\n", "\n\n", "。"]) if parts else ""
        parts.append(sep + p)
        size += len(sep) + len(p)
    text = "".join(parts)[:n]
    return text if text.strip() else "你好"[: max(n, 1)]


def texts(count: int, seed: int = 12) -> Iterator[str]:
    """``count`` texts; the first is the longest (615), so every run holds the max."""
    rng = random.Random(seed)
    for i in range(count):
        yield text_of_length(rng, MAX_LENGTH if i == 0 else _length_at(rng.random()))


def openid(i: int) -> str:
    return f"oBenchUser{i % N_OPENIDS:06d}"


def length_percentiles(sample: list[str]) -> dict[str, int]:
    lengths = sorted(len(t) for t in sample)
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    return {"p10": pick(0.10), "p50": pick(0.50), "p90": pick(0.90), "max": lengths[-1]}
