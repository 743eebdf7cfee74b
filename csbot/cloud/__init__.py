"""WeChat's cloud-development model on the operator's own server: functions, database, storage."""
