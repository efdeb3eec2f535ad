using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;

namespace PortAzure.LoadBench;

/// <summary>
/// Sends Port-style webhook calls: a 525-byte v1 run message with a unique <c>context.runId</c>, signed
/// as Port signs (<c>X-Port-Timestamp</c>, <c>X-Port-Signature: v1,base64(HMAC-SHA256(secret, ts + "." + body))</c>).
/// The signature is computed here independently of PortAzure.Shared. The same client drives the bare
/// Kestrel baseline, so both pay the same client-side cost on the same cores.
/// </summary>
internal sealed class LoadClient : IDisposable
{
    public const string SamplePlaceholder = "r_DemoRun0001";
    private readonly HttpClient _http;
    private readonly Uri _uri;
    private readonly byte[] _secret;
    private readonly byte[] _prefix;
    private readonly byte[] _suffix;
    private long _timestampSecond;
    private string _timestamp = "";

    public LoadClient(Uri baseUri, string org, string webhook, string secret, int maxConnections, byte[] sample)
    {
        _http = new HttpClient(new SocketsHttpHandler
        {
            MaxConnectionsPerServer = maxConnections,
            UseProxy = false,
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            ConnectTimeout = TimeSpan.FromSeconds(10),
        })
        {
            Timeout = TimeSpan.FromSeconds(60),
        };
        _uri = new Uri(baseUri, $"{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version=6.0-preview");
        _secret = Encoding.UTF8.GetBytes(secret);
        var text = Encoding.UTF8.GetString(sample);
        var at = text.IndexOf(SamplePlaceholder, StringComparison.Ordinal);
        if (at < 0)
        {
            throw new InvalidOperationException($"The sample body has no {SamplePlaceholder} to replace.");
        }
        _prefix = Encoding.UTF8.GetBytes(text[..at]);
        _suffix = Encoding.UTF8.GetBytes(text[(at + SamplePlaceholder.Length)..]);
    }

    public byte[] Body(string runId)
    {
        var id = Encoding.ASCII.GetBytes(runId);
        var body = new byte[_prefix.Length + id.Length + _suffix.Length];
        _prefix.CopyTo(body, 0);
        id.CopyTo(body, _prefix.Length);
        _suffix.CopyTo(body, _prefix.Length + id.Length);
        return body;
    }

    private string Timestamp()
    {
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (now != Volatile.Read(ref _timestampSecond))
        {
            Volatile.Write(ref _timestamp, now.ToString(CultureInfo.InvariantCulture));
            Volatile.Write(ref _timestampSecond, now);
        }
        return Volatile.Read(ref _timestamp);
    }

    public static string SignV1(byte[] secret, string timestamp, byte[] body)
    {
        var ts = Encoding.ASCII.GetBytes(timestamp);
        var message = new byte[ts.Length + 1 + body.Length];
        ts.CopyTo(message, 0);
        message[ts.Length] = (byte)'.';
        body.CopyTo(message, ts.Length + 1);
        return "v1," + Convert.ToBase64String(HMACSHA256.HashData(secret, message));
    }

    /// <summary>One signed POST; the HTTP status, or 0 for a transport error or timeout.</summary>
    public async Task<int> SendAsync(string runId)
    {
        var body = Body(runId);
        var timestamp = Timestamp();
        using var request = new HttpRequestMessage(HttpMethod.Post, _uri) { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.TryAddWithoutValidation("X-Port-Timestamp", timestamp);
        request.Headers.TryAddWithoutValidation("X-Port-Signature", SignV1(_secret, timestamp, body));
        try
        {
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead);
            return (int)response.StatusCode;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            return 0;
        }
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>What one load phase produced: statuses by request index and latencies in microseconds.</summary>
internal sealed class LoadResult
{
    public required string Name { get; init; }
    public required Func<long, string> RunId { get; init; }
    public required int[] Status { get; init; }
    public required double[] LatencyMicros { get; init; }
    public required DateTimeOffset[] SentAt { get; init; }
    public long Issued { get; set; }
    public double RatePerSecond { get; set; }
    public double ElapsedSeconds { get; set; }
    public double TargetRate { get; set; }

    public int Accepted => Status.Take((int)Issued).Count(s => s == 202);

    /// <summary>The rate of 202s alone: a refusal (429, 503) is an answer, often a fast one, not an accepted run.</summary>
    public double AcceptedPerSecond => Issued == 0 ? 0 : RatePerSecond * Accepted / Issued;
    public int Failed => (int)Issued - Accepted;

    public IEnumerable<string> AcceptedRunIds()
    {
        for (long i = 0; i < Issued; i++)
        {
            if (Status[i] == 202)
            {
                yield return RunId(i);
            }
        }
    }

    /// <summary>
    /// Of the 202s only: the issue asks for accept latency, and refusals (fast 503s under overload) would pull the
    /// percentiles down. The status summary shows how many there were.
    /// </summary>
    public Percentiles Latency() => Percentiles.Of(Enumerable.Range(0, (int)Issued).Where(i => Status[i] == 202).Select(i => LatencyMicros[i] / 1000.0));

    public string StatusSummary() => string.Join(", ", Status.Take((int)Issued).GroupBy(s => s).OrderBy(g => g.Key).Select(g => $"{g.Key}: {g.Count()}"));
}

internal readonly record struct Percentiles(int Count, double P50, double P99, double P999, double Max)
{
    public static Percentiles Of(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0)
        {
            return new(0, double.NaN, double.NaN, double.NaN, double.NaN);
        }
        double At(double q) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        return new(sorted.Length, At(0.50), At(0.99), At(0.999), sorted[^1]);
    }

    public override string ToString() => Count == 0 ? "n/a" : $"p50 {P50:0.00} ms, p99 {P99:0.00} ms, p99.9 {P999:0.00} ms, max {Max:0.00} ms (n={Count})";
}

/// <summary>The two load models.</summary>
internal static class LoadModels
{
    /// <summary>
    /// Closed loop: <paramref name="connections"/> workers, each sends the next request as soon as its
    /// previous one is answered, until <paramref name="count"/> requests are issued or <paramref name="duration"/>
    /// has passed. The rate is measured after the first <paramref name="warmupCount"/> answers.
    /// </summary>
    public static async Task<LoadResult> ClosedAsync(string name, LoadClient client, int connections, long count, TimeSpan? duration, long warmupCount, Func<long, string> runId)
    {
        var capacity = (int)Math.Min(count, 20_000_000);
        var result = new LoadResult
        {
            Name = name,
            RunId = runId,
            Status = new int[capacity],
            LatencyMicros = new double[capacity],
            SentAt = [],
        };
        long next = -1, answered = 0, warmTicks = 0;
        var stop = false;
        var start = Stopwatch.GetTimestamp();
        long? deadline = duration is { } d ? start + (long)(d.TotalSeconds * Stopwatch.Frequency) : null;
        var workers = Enumerable.Range(0, connections).Select(_ => Task.Run(async () =>
        {
            while (!Volatile.Read(ref stop))
            {
                var i = Interlocked.Increment(ref next);
                if (i >= capacity)
                {
                    break;
                }
                var sent = Stopwatch.GetTimestamp();
                result.Status[i] = await client.SendAsync(runId(i));
                var done = Stopwatch.GetTimestamp();
                result.LatencyMicros[i] = (done - sent) * 1_000_000.0 / Stopwatch.Frequency;
                if (Interlocked.Increment(ref answered) == warmupCount)
                {
                    Volatile.Write(ref warmTicks, done);
                }
                if (deadline is { } dl && done >= dl)
                {
                    Volatile.Write(ref stop, true);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);
        var end = Stopwatch.GetTimestamp();
        result.Issued = Math.Min(Interlocked.Read(ref next) + 1, capacity);
        var warm = warmTicks == 0 ? start : warmTicks;
        var measured = warmTicks == 0 ? answered : answered - warmupCount;
        result.ElapsedSeconds = (end - start) / (double)Stopwatch.Frequency;
        result.RatePerSecond = measured / ((end - warm) / (double)Stopwatch.Frequency);
        // Only the answered requests have a latency; the result keeps all issued ones.
        result.Issued = answered;
        return result;
    }

    /// <summary>
    /// Open model: request i is due at t0 + i / rate, whatever happened to the earlier ones. Its latency
    /// runs from the due time, not from the moment the client got round to sending it, so queueing in
    /// the client, the connection pool or the server is all counted (no coordinated omission).
    /// </summary>
    public static async Task<LoadResult> OpenAsync(string name, LoadClient client, double rate, TimeSpan duration, Func<long, string> runId)
    {
        var count = (int)Math.Max(1, Math.Round(rate * duration.TotalSeconds));
        var result = new LoadResult
        {
            Name = name,
            RunId = runId,
            Status = new int[count],
            LatencyMicros = new double[count],
            SentAt = new DateTimeOffset[count],
            TargetRate = rate,
        };
        var tasks = new Task[count];
        var t0 = Stopwatch.GetTimestamp() + (Stopwatch.Frequency / 100);
        var wall0 = DateTimeOffset.UtcNow + TimeSpan.FromMilliseconds(10);
        var ticksPerRequest = Stopwatch.Frequency / rate;

        async Task SendAt(long i, long due)
        {
            await Task.Yield();
            result.Status[i] = await client.SendAsync(runId(i));
            result.LatencyMicros[i] = (Stopwatch.GetTimestamp() - due) * 1_000_000.0 / Stopwatch.Frequency;
        }

        var scheduler = new Thread(() =>
        {
            for (var i = 0; i < count; i++)
            {
                var due = t0 + (long)(i * ticksPerRequest);
                // Sleep, never spin: on two cores a spinning scheduler took most of a core from the servers
                // under test. A request can leave up to ~1 ms after its due time (the sleep's granularity);
                // that lateness is counted in its latency, which runs from the due time.
                while (Stopwatch.GetTimestamp() < due)
                {
                    Thread.Sleep(1);
                }
                result.SentAt[i] = wall0 + TimeSpan.FromSeconds((due - t0) / (double)Stopwatch.Frequency);
                tasks[i] = SendAt(i, due);
            }
        })
        { IsBackground = true, Name = "open-model-scheduler", Priority = ThreadPriority.AboveNormal };
        scheduler.Start();
        await Task.Run(scheduler.Join);
        await Task.WhenAll(tasks);
        var end = Stopwatch.GetTimestamp();
        result.Issued = count;
        result.ElapsedSeconds = (end - t0) / (double)Stopwatch.Frequency;
        result.RatePerSecond = count / duration.TotalSeconds;
        return result;
    }
}
