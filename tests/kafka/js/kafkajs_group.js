// A kafkajs group consumer (subscribe) that reads, commits and leaves.
//
//   node kafkajs_group.js BOOTSTRAP GROUP TOPIC COUNT
//
// Joins GROUP subscribed to TOPIC, reads from the group's committed offsets (earliest
// where there are none) until it has COUNT records, commits, for each partition it read,
// the offset after its last record of those COUNT, disconnects (LeaveGroup) and prints one
// line {"records": [[partition, offset, key], ...]}. Records delivered beyond the COUNT are
// not reported nor committed: the next consumer of the group reads them. Errors exit
// non-zero.
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const TIMEOUT_MS = 15000

async function main () {
  const [bootstrap, group, topic, countText] = process.argv.slice(2)
  const count = Number(countText)
  const kafka = new Kafka({
    clientId: 'cairn-kafkajs-group-test',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator: () => ({ level, log }) => {
      process.stderr.write(`${JSON.stringify({ level, ...log })}\n`)
    }
  })
  const consumer = kafka.consumer({
    groupId: group,
    sessionTimeout: 6000,
    rebalanceTimeout: 20000,
    heartbeatInterval: 200,
    // disconnect() waits for the fetch in flight: keep its long-poll short.
    maxWaitTimeInMs: 500
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const records = []
  let done
  const finished = new Promise((resolve) => { done = resolve })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      if (records.length < count) {
        records.push([partition, Number(message.offset), message.key.toString()])
        if (records.length === count) done()
      }
    }
  })
  const timer = setTimeout(() => {
    process.stderr.write(`only ${records.length} of ${count} records in ${TIMEOUT_MS} ms\n`)
    process.exit(1)
  }, TIMEOUT_MS)
  await finished
  clearTimeout(timer)
  const nextOffsets = new Map()
  for (const [partition, offset] of records) {
    nextOffsets.set(partition, Math.max(nextOffsets.get(partition) || 0, offset + 1))
  }
  await consumer.commitOffsets([...nextOffsets].map(([partition, offset]) => (
    { topic, partition, offset: String(offset) }
  )))
  await consumer.disconnect()
  process.stdout.write(`${JSON.stringify({ records })}\n`)
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`)
  process.exit(1)
})
