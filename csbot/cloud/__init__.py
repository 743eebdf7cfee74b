"""WeChat's cloud-development model on the operator's own server: functions, database, storage.

``csbot.cloud.Database`` is the JSON document database for scripts (handlers get it as
``context.db``).
"""

from typing import Any


def __getattr__(name: str) -> Any:  # lazy: importing csbot.cloud stays cheap
    if name == "Database":
        from csbot.cloud.database import Database

        return Database
    raise AttributeError(name)
