"""Everything that talks to the outside world: database, blob storage, queues."""
