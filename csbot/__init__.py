"""csbot: a self-hosted, async customer-service bot service for WeChat Mini Programs.

What handlers import::

    from csbot import route, NEXT, Text, Image, Link, MiniProgramPage, TransferCustomerService
    from csbot import function          # callable functions (csbot.cloud)
"""

from csbot.messages import (Article, Image, Link, MiniProgramPage, Music, News, Reply, Text, TransferCustomerService,
                            Video, Voice)
from csbot.routing import NEXT, route
from csbot.cloud.functions import function

__version__ = "0.1.0"
__all__ = ["Article", "Image", "Link", "MiniProgramPage", "Music", "NEXT", "News", "Reply", "Text",
           "TransferCustomerService", "Video", "Voice", "function", "route"]
