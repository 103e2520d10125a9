from poller.launch import entry

entry()
