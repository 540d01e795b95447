"""The stream runtime: what any job needs from Kafka, and nothing of the omnichannel domain."""
