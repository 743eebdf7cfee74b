"""WeChat's cloud-development model on the operator's own server: functions, database, storage.

- ``sessions``: ``POST /cloud/login`` (``wx.login`` → session token), ``require_session``
- ``functions``: callable functions (``@function``, ``POST /cloud/functions/{name}``)
- ``opendata``: CloudID resolution, ``encryptedData`` decryption, ``rawData`` signatures
- ``storage``: files by cloudPath (``/cloud/storage``, ``/cloud/files``, the ``/tcb`` storage API)
- ``http``: the ``/cloud`` and ``/tcb`` routes
- ``client/csbot-cloud.js``: the mini program's ``wx.cloud``-shaped client
"""

from csbot.cloud.errors import CloudError
from csbot.cloud.sessions import CloudSession, SessionStore, require_session

__all__ = ["CloudError", "CloudSession", "SessionStore", "require_session"]
