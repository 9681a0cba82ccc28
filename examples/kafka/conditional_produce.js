#!/usr/bin/env node
// Book a seat from a kafkajs producer, conditionally: only if nobody has booked it yet.
//
// The condition rides in a record header (see conditional_produce.py for the full list):
// `cairn.expect: no-key` makes the append fail with INVALID_RECORD when the key already
// has a record. kafkajs 2.x speaks Produce v7, whose response has no error message, so it
// learns only that the condition failed, not the key's current offset (librdkafka and the
// Java client, on Produce v8+, get the server's message with it): read the key's latest
// record to decide again.
//
// kafkajs sends the messages of one `send` call as one batch per partition, and Cairn
// appends or refuses a batch as a whole: so send a conditional write alone, one message
// per `send`, and await it before deciding the next. `retry.retries: 0` surfaces the
// conflict at once (INVALID_RECORD is not retriable anyway). kafkajs partitions keys with
// Kafka's murmur2 (its DefaultPartitioner), as Cairn's native clients do.
//
// Usage: conditional_produce.js BOOTSTRAP TOPIC SEAT PASSENGER
// Prints "booked <seat> at <partition>/<offset>" or "taken <seat>"; exits 0 or 3.

const { Kafka, Partitioners, logLevel } = require('kafkajs')

async function book (bootstrap, topic, seat, passenger) {
  const kafka = new Kafka({ brokers: [bootstrap], logLevel: logLevel.NOTHING, retry: { retries: 0 } })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, maxInFlightRequests: 1 })
  await producer.connect()
  try {
    const [written] = await producer.send({
      topic,
      acks: -1,
      messages: [{ key: seat, value: passenger, headers: { 'cairn.expect': 'no-key' } }]
    })
    console.log(`booked ${seat} at ${written.partition}/${written.baseOffset}`)
    return 0
  } catch (error) {
    const cause = error.type === 'INVALID_RECORD' ? error : (error.cause || error)
    if (cause.type === 'INVALID_RECORD') {
      console.log(`taken ${seat}`)
      return 3
    }
    console.error(`failed: ${error.message}`)
    return 1
  } finally {
    await producer.disconnect()
  }
}

if (process.argv.length !== 6) {
  console.error('usage: conditional_produce.js BOOTSTRAP TOPIC SEAT PASSENGER')
  process.exit(2)
}
book(...process.argv.slice(2)).then(code => process.exit(code))
