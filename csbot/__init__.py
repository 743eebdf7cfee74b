"""csbot: a self-hosted, async customer-service bot service for WeChat Mini Programs.

What handlers import::

    from csbot import route, NEXT, Text, Image, Link, MiniProgramPage, TransferCustomerService
"""

from csbot.messages import Image, Link, MiniProgramPage, Reply, Text, TransferCustomerService
from csbot.routing import NEXT, route

__version__ = "0.1.0"
__all__ = ["Image", "Link", "MiniProgramPage", "NEXT", "Reply", "Text", "TransferCustomerService", "route"]
