"""Templates the local stack renders: the Maven POM of the broker class path, the broker's
server.properties and log4j2 configuration, and redis.conf."""
