"""mirror: exactly-once replication of a facility's topics from the central Kafka to the local Kafka."""
