using System.Collections.Concurrent;
using System.IO.Compression;
using System.Text;

/// <summary>
/// A stand-in for an OpenTelemetry collector (OTLP/HTTP, protobuf), so that the bench can measure what exporting
/// every span and log record costs the services. It answers 200 to each export and counts, per service.name, the
/// spans and log records it received: against the runs the Ingress accepted, the counts show whether the SDK's
/// batch processors kept up or dropped some.
/// </summary>
internal static class OtlpSink
{
    private static readonly ConcurrentDictionary<string, Counts> Received = new(StringComparer.Ordinal);

    public static void Map(WebApplication app)
    {
        // Field paths of the export requests (opentelemetry-proto): request.resource_X = 1, resource = 1,
        // scope_X = 2, X = 2; resource.attributes = 1, key = 1, value = 2, string_value = 1.
        app.MapPost("/v1/traces", (HttpContext context) => ExportAsync(context, (c, n) => Interlocked.Add(ref c.Spans, n)));
        app.MapPost("/v1/logs", (HttpContext context) => ExportAsync(context, (c, n) => Interlocked.Add(ref c.LogRecords, n)));
        app.MapPost("/v1/metrics", (HttpContext context) => ExportAsync(context, (c, n) => Interlocked.Add(ref c.Metrics, n)));
        app.MapGet("/v1/received", () => Received.ToDictionary(kv => kv.Key, kv => new
        {
            spans = Interlocked.Read(ref kv.Value.Spans),
            logRecords = Interlocked.Read(ref kv.Value.LogRecords),
            metrics = Interlocked.Read(ref kv.Value.Metrics),
            requests = Interlocked.Read(ref kv.Value.Requests),
            bytes = Interlocked.Read(ref kv.Value.Bytes),
        }));
    }

    private static async Task ExportAsync(HttpContext context, Action<Counts, long> add)
    {
        using var buffer = new MemoryStream();
        var body = context.Request.Headers.ContentEncoding == "gzip"
            ? new GZipStream(context.Request.Body, CompressionMode.Decompress)
            : context.Request.Body;
        await body.CopyToAsync(buffer, context.RequestAborted);
        var message = buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
        var length = (long)buffer.Length;
        ForEachField(message.Span, 1, resourceX =>
        {
            var service = "(no service.name)";
            ForEachField(resourceX, 1, resource => ForEachField(resource, 1, attribute =>
            {
                string? key = null;
                string? value = null;
                ForEachField(attribute, 1, k => key = Encoding.UTF8.GetString(k));
                ForEachField(attribute, 2, v => ForEachField(v, 1, s => value = Encoding.UTF8.GetString(s)));
                if (key == "service.name" && value is not null)
                {
                    service = value;
                }
            }));
            var items = 0L;
            ForEachField(resourceX, 2, scopeX => ForEachField(scopeX, 2, _ => items++));
            var counts = Received.GetOrAdd(service, _ => new Counts());
            add(counts, items);
            Interlocked.Increment(ref counts.Requests);
            Interlocked.Add(ref counts.Bytes, length);
            length = 0;
        });
        context.Response.ContentType = "application/x-protobuf";
    }

    /// <summary>Calls <paramref name="visit"/> with the bytes of every length-delimited field numbered <paramref name="number"/>.</summary>
    private static void ForEachField(ReadOnlySpan<byte> message, int number, SpanAction visit)
    {
        var position = 0;
        while (position < message.Length)
        {
            var tag = ReadVarint(message, ref position);
            var field = (int)(tag >> 3);
            switch (tag & 7)
            {
                case 0: ReadVarint(message, ref position); break;
                case 1: position += 8; break;
                case 5: position += 4; break;
                case 2:
                    var length = checked((int)ReadVarint(message, ref position));
                    if (field == number)
                    {
                        visit(message.Slice(position, length));
                    }
                    position += length;
                    break;
                default: throw new InvalidDataException($"protobuf wire type {tag & 7} at byte {position}");
            }
        }
    }

    private static ulong ReadVarint(ReadOnlySpan<byte> message, ref int position)
    {
        ulong value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            var b = message[position++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80)
            {
                return value;
            }
        }
        throw new InvalidDataException("protobuf varint longer than 10 bytes");
    }

    private delegate void SpanAction(ReadOnlySpan<byte> field);

    private sealed class Counts
    {
        public long Spans;
        public long LogRecords;
        public long Metrics;
        public long Requests;
        public long Bytes;
    }
}
