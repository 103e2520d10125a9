from poller.cli import entry

entry()
