"""WeChat's cloud-development model on the operator's own server: functions, database, storage.

- ``sessions``: ``POST /cloud/login`` (``wx.login`` → session token), ``require_session``
- ``functions``: callable functions (``@function``, ``POST /cloud/functions/{name}``)
- ``opendata``: CloudID resolution, ``encryptedData`` decryption, ``rawData`` signatures
- ``storage``: files by cloudPath (``/cloud/storage``, ``/cloud/files``, the ``/tcb`` storage API)
- ``http``: the ``/cloud`` and ``/tcb`` routes
- ``client/csbot-cloud.js``: the mini program's ``wx.cloud``-shaped client
- ``database``: the JSON document database (``context.db``, ``csbot.cloud.Database``, ``/cloud/db``, ``/tcb/database*``)
"""

from typing import Any

from csbot.cloud.errors import CloudError
from csbot.cloud.sessions import CloudSession, SessionStore, require_session

__all__ = ["CloudError", "CloudSession", "SessionStore", "require_session"]


def __getattr__(name: str) -> Any:  # lazy: the database package is imported only when used
    if name == "Database":
        from csbot.cloud.database import Database

        return Database
    raise AttributeError(name)
