// kafkajs against a Cairn Kafka listener: produce, long-poll fetch, offsets by time.
//
//   node kafkajs_client.js produce BOOTSTRAP TOPIC
//       stdin: JSON lines {"key", "value", "timestamp_ms" (optional), "partition" (optional)};
//       stdout: per record {"key", "partition", "offset"}, the DefaultPartitioner (Java's
//       murmur2) choosing the partition when none is given.
//   node kafkajs_client.js long-poll BOOTSTRAP TOPIC PARTITION MAX_WAIT_MS
//       Prints {"event": "idle_fetch", "latency_ms", "records"} once a fetch from the
//       partition's end came back empty, then {"event": "waiting"}, then {"event":
//       "received", "offset", "value", "waited_ms"} for the first record that arrives after
//       that (the caller appends it).
//   node kafkajs_client.js times BOOTSTRAP TOPIC PARTITION TIMESTAMP_MS...
//       One line {"timestamp_ms", "offset"} per target: fetchTopicOffsetsByTimestamp
//       (ListOffsets by timestamp). When no record is that late the broker answers -1, and
//       kafkajs reports the partition's end offset instead.
//   node kafkajs_client.js committed BOOTSTRAP TOPIC GROUP
//       One line {"partitions": [{"partition", "offset", "metadata"}]}: the group's committed
//       offsets of the topic by admin.fetchOffsets (FindCoordinator, then OffsetFetch), an
//       offset of -1 where nothing is committed. (A kafkajs consumer commits only as a
//       member of a group it joined, so kafkajs reads committed offsets here, never writes.)
//   node kafkajs_client.js retention BOOTSTRAP TOPIC
//       Creates TOPIC with retention.ms=3600000 (createTopics configEntries), reads it back
//       (describeConfigs), replaces its config with retention.bytes=1048576 alone
//       (alterConfigs, Kafka's whole-config AlterConfigs), reads it back, and tries to
//       create TOPIC-compact with cleanup.policy=compact. One line {"created": {name:
//       value}, "altered": {name: value}, "compact": {"type", "message"} or null}.
//
// Logs go to stderr: stdout carries only the JSON lines the test parses.
'use strict'

const readline = require('readline')
const { ConfigResourceTypes, Kafka, logLevel } = require('kafkajs')

const TIMEOUT_MS = 15000

function kafkaFor (bootstrap) {
  return new Kafka({
    clientId: 'cairn-kafkajs-test',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator: () => ({ level, log }) => {
      process.stderr.write(`kafkajs ${level}: ${JSON.stringify(log)}\n`)
    },
    requestTimeout: TIMEOUT_MS,
    retry: { retries: 3 }
  })
}

function emit (result) {
  process.stdout.write(JSON.stringify(result) + '\n')
}

async function produce (bootstrap, topic) {
  const producer = kafkaFor(bootstrap).producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const request = JSON.parse(line)
    const message = { key: request.key, value: request.value }
    if (request.partition != null) message.partition = request.partition
    if (request.timestamp_ms != null) message.timestamp = String(request.timestamp_ms)
    const [metadata] = await producer.send({ topic, acks: -1, messages: [message] })
    emit({ key: request.key, partition: metadata.partition, offset: Number(metadata.baseOffset) })
  }
  await producer.disconnect()
}

// kafkajs fetches only inside a consumer group; Cairn has no groups yet, so this drives
// kafkajs's own cluster and broker code (its Fetch encoding and connection) directly.
async function leaderOf (kafka, topic, partition) {
  const createCluster = kafka[Object.getOwnPropertySymbols(kafka)
    .find(symbol => symbol.description === 'private:Kafka:createCluster')]
  const cluster = createCluster({})
  await cluster.connect()
  await cluster.addTargetTopic(topic)
  const byLeader = cluster.findLeaderForPartitions(topic, [partition])
  const [nodeId] = Object.keys(byLeader)
  return { cluster, broker: await cluster.findBroker({ nodeId }) }
}

async function longPoll (bootstrap, topic, partition, maxWaitMs) {
  const kafka = kafkaFor(bootstrap)
  const admin = kafka.admin()
  await admin.connect()
  const offsets = await admin.fetchTopicOffsets(topic)
  const end = offsets.find(entry => entry.partition === partition).high
  await admin.disconnect()
  const { cluster, broker } = await leaderOf(kafka, topic, partition)

  const fetch = async (fetchOffset) => {
    const started = Date.now()
    const response = await broker.fetch({
      maxWaitTime: maxWaitMs,
      minBytes: 1,
      topics: [{ topic, partitions: [{ partition, fetchOffset, maxBytes: 1048576 }] }]
    })
    const messages = response.responses.flatMap(entry =>
      entry.partitions.flatMap(data => {
        if (data.errorCode !== 0) throw new Error(`fetch error code ${data.errorCode}`)
        return data.messages
      }))
    return { latencyMs: Date.now() - started, messages }
  }

  const idle = await fetch(end)
  if (idle.messages.length !== 0) throw new Error(`records on an idle partition at ${end}`)
  emit({ event: 'idle_fetch', latency_ms: idle.latencyMs, records: 0 })
  emit({ event: 'waiting' })
  const waitingSince = Date.now()
  for (;;) {
    const { messages } = await fetch(end)
    if (Date.now() - waitingSince > TIMEOUT_MS + maxWaitMs) throw new Error('nothing received')
    if (messages.length > 0) {
      emit({
        event: 'received',
        offset: Number(messages[0].offset),
        value: messages[0].value.toString(),
        waited_ms: Date.now() - waitingSince
      })
      break
    }
  }
  await cluster.disconnect()
}

async function times (bootstrap, topic, partition, targets) {
  const admin = kafkaFor(bootstrap).admin()
  await admin.connect()
  for (const timestampMs of targets) {
    const found = await admin.fetchTopicOffsetsByTimestamp(topic, timestampMs)
    const entry = found.find(candidate => candidate.partition === partition)
    emit({ timestamp_ms: timestampMs, offset: Number(entry.offset) })
  }
  await admin.disconnect()
}

async function committed (bootstrap, topic, group) {
  const admin = kafkaFor(bootstrap).admin()
  await admin.connect()
  const [found] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
  const partitions = found.partitions
    .map(entry => ({ partition: entry.partition, offset: Number(entry.offset), metadata: entry.metadata }))
    .sort((left, right) => left.partition - right.partition)
  emit({ partitions })
  await admin.disconnect()
}

async function retention (bootstrap, topic) {
  const admin = kafkaFor(bootstrap).admin()
  await admin.connect()
  const configs = async () => {
    const described = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms', 'retention.bytes'] }],
      includeSynonyms: false
    })
    const entries = {}
    for (const entry of described.resources[0].configEntries) {
      entries[entry.configName] = entry.configValue
    }
    return entries
  }
  await admin.createTopics({
    topics: [{ topic, numPartitions: 1, configEntries: [{ name: 'retention.ms', value: '3600000' }] }]
  })
  const created = await configs()
  await admin.alterConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.bytes', value: '1048576' }] }]
  })
  const altered = await configs()
  let compact = null
  try {
    await admin.createTopics({
      topics: [{ topic: `${topic}-compact`, numPartitions: 1, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] }]
    })
  } catch (error) {
    const cause = (error.errors && error.errors[0]) || error
    compact = { type: cause.type || error.type || error.name, message: String(cause.message || error.message) }
  }
  emit({ created, altered, compact })
  await admin.disconnect()
}

async function main () {
  const [mode, bootstrap, topic, ...rest] = process.argv.slice(2)
  if (mode === 'produce') {
    await produce(bootstrap, topic)
  } else if (mode === 'long-poll') {
    await longPoll(bootstrap, topic, Number(rest[0]), Number(rest[1]))
  } else if (mode === 'times') {
    await times(bootstrap, topic, Number(rest[0]), rest.slice(1).map(Number))
  } else if (mode === 'committed') {
    await committed(bootstrap, topic, rest[0])
  } else if (mode === 'retention') {
    await retention(bootstrap, topic)
  } else {
    throw new Error(`unknown mode ${mode}`)
  }
}

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
main().catch(error => {
  process.stderr.write(`${error.stack || error}\n`)
  process.exit(1)
})
