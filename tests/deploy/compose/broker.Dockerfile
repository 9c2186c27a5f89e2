# The test broker (tansu, a Kafka-protocol broker) as an image, for running the project's
# docker-compose.yml where the Kafka image cannot be pulled (tests/deploy/test_compose_run.py
# builds it from the installed binary). Not for production: a user runs apache/kafka.
ARG DEBIAN_RELEASE=bookworm
FROM debian:${DEBIAN_RELEASE}-slim
COPY tansu /usr/local/bin/tansu
RUN groupadd --system --gid 10002 broker \
    && useradd --system --uid 10002 --gid 10002 --home-dir /var/lib/broker --create-home --shell /usr/sbin/nologin broker
USER 10002:10002
WORKDIR /var/lib/broker
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu", "broker", "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://msg-queue:9092", "--storage-engine", "memory://tansu/"]
