using System.Globalization;
using System.Text;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using PortAzure.Ingress.Webhooks;
using PortAzure.Redis;
using PortAzure.Signing;
using StackExchange.Redis;

namespace PortAzure.Benchmarks;

/// <summary>The 525-byte Port v1 run message from /work/shared/reference (copied to bench/data).</summary>
public static class Sample
{
    public static byte[] Body { get; } = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Data", "port-run-v1.sample.json"));
    public const string Secret = "port-demo-secret";
}

/// <summary>Port's v1 signature check as the Ingress calls it: one header value, one secret.</summary>
[MemoryDiagnoser]
public class PortSignatureBenchmarks
{
    private readonly byte[] _body = Sample.Body;
    private readonly IReadOnlyList<byte[]> _secrets = [Encoding.UTF8.GetBytes(Sample.Secret)];
    private readonly IReadOnlyList<byte[]> _twoSecrets = [Encoding.UTF8.GetBytes(Sample.Secret), Encoding.UTF8.GetBytes("previous-secret")];
    private readonly string _timestamp = DateTimeOffset.UtcNow.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
    private string _header = "";

    [GlobalSetup]
    public void Setup() => _header = PortSignature.ComputeV1(Sample.Secret, _timestamp, _body);

    [Benchmark(Baseline = true)]
    public bool VerifyV1() => PortSignature.VerifyV1(_header, _timestamp, _body, _secrets);

    [Benchmark]
    public bool VerifyV1_TwoSecrets() => PortSignature.VerifyV1(_header, _timestamp, _body, _twoSecrets);

    [Benchmark]
    public bool HasV1Signature() => PortSignature.HasV1Signature(_header);
}

/// <summary>The HMAC-SHA1 header the Dispatcher puts on every POST to Azure.</summary>
[MemoryDiagnoser]
public class AzureSignatureBenchmarks
{
    private readonly byte[] _body = Sample.Body;
    private readonly byte[] _secret = Encoding.UTF8.GetBytes(Sample.Secret);

    [Benchmark]
    public string ComputeHex() => AzureSignature.Compute(_body, _secret, SignatureFormat.Hex);

    /// <summary>As AzureWebhookClient does it: the secret's bytes are made on every POST.</summary>
    [Benchmark]
    public string ComputeHex_WithSecretEncoding() => AzureSignature.Compute(_body, Encoding.UTF8.GetBytes(Sample.Secret), SignatureFormat.Hex);
}

/// <summary>Finding the run id as the Ingress does: parse with its options, then look in the known places.</summary>
[MemoryDiagnoser]
public class RunIdBenchmarks
{
    private static readonly JsonDocumentOptions Options = new() { MaxDepth = 64, AllowDuplicateProperties = false };
    private readonly byte[] _body = Sample.Body;

    [Benchmark(Baseline = true)]
    public string? ParseAndFind()
    {
        using var document = JsonDocument.Parse(_body, Options);
        return RunIdExtractor.Find(document.RootElement);
    }

    [Benchmark]
    public int ParseOnly()
    {
        using var document = JsonDocument.Parse(_body, Options);
        return (int)document.RootElement.ValueKind;
    }

    [Benchmark]
    public bool IsAcceptable() => RunIdExtractor.IsAcceptable("r_DemoRun0001", 200);
}

/// <summary>The stream entry's encoding (Ingress) and decoding (Dispatcher).</summary>
[MemoryDiagnoser]
public class DeliveryEntryBenchmarks
{
    private DeliveryEntry _entry = null!;
    private KeyValuePair<RedisValue, RedisValue>[] _fields = [];
    private StreamEntry _streamEntry;

    [GlobalSetup]
    public void Setup()
    {
        _entry = new DeliveryEntry("d_0197b2c4e5f67890abcdef0123456789", "contoso", "deploy", Sample.Body, "r_DemoRun0001", "r_DemoRun0001",
            DateTimeOffset.UtcNow, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", null);
        var stream = _entry.ToStreamFields();
        _fields = [.. stream.Select(f => new KeyValuePair<RedisValue, RedisValue>(f.Name, f.Value))];
        _streamEntry = new StreamEntry("1700000000000-0", stream);
    }

    [Benchmark]
    public NameValueEntry[] ToStreamFields() => _entry.ToStreamFields();

    /// <summary>Everything the Ingress encodes for the enqueue script per run: the fields and the script's own arguments.</summary>
    [Benchmark]
    public RedisValue[] ToScriptArguments() => ScriptArguments.WithFields(_entry.ToStreamFields(),
        _entry.DeliveryId, 604_800L, RedisKeys.WakeChannel, 1, _entry.ReceivedAt.ToUnixTimeMilliseconds(), 600L);

    [Benchmark]
    public DeliveryEntry? FromFields() => DeliveryEntry.FromFields(_fields);

    [Benchmark]
    public DeliveryEntry? FromStreamEntry() => DeliveryEntry.FromStreamEntry(_streamEntry);
}

/// <summary>
/// The per-address permit every webhook call takes around its body read and signature check (WebhookOpenCalls), as
/// shipped (rate limiting on: a ConcurrencyLimiter per address) and as the load bench runs it (off: no limiter, the
/// counter only). Run ae could not tell either from noise.
/// </summary>
[MemoryDiagnoser]
public class OpenCallsBenchmarks
{
    private PortAzure.Ingress.Edge.WebhookOpenCalls _on = null!;
    private PortAzure.Ingress.Edge.WebhookOpenCalls _off = null!;
    private Microsoft.Extensions.DependencyInjection.ServiceProvider _services = null!;
    private readonly Microsoft.AspNetCore.Http.DefaultHttpContext _context = new();

    [GlobalSetup]
    public void Setup()
    {
        // The meter as the service has it, with a listener (OpenTelemetry's, in the service) so that the counter records.
        _services = Microsoft.Extensions.DependencyInjection.ServiceCollectionContainerBuilderExtensions.BuildServiceProvider(
            Microsoft.Extensions.DependencyInjection.MetricsServiceExtensions.AddMetrics(new Microsoft.Extensions.DependencyInjection.ServiceCollection()));
        var metrics = new PortAzure.Ingress.Diagnostics.IngressMetrics(
            Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(_services));
        _listener.InstrumentPublished = (instrument, listener) => listener.EnableMeasurementEvents(instrument);
        _listener.SetMeasurementEventCallback<long>((_, _, _, _) => { });
        _listener.Start();
        _context.Connection.RemoteIpAddress = System.Net.IPAddress.Parse("203.0.113.7");
        _on = new(Microsoft.Extensions.Options.Options.Create(new PortAzure.Ingress.Edge.RateLimitOptions()), metrics);
        _off = new(Microsoft.Extensions.Options.Options.Create(new PortAzure.Ingress.Edge.RateLimitOptions { Enabled = false }), metrics);
    }

    private readonly System.Diagnostics.Metrics.MeterListener _listener = new();

    [GlobalCleanup]
    public void Cleanup()
    {
        _listener.Dispose();
        _on.Dispose();
        _off.Dispose();
        _services.Dispose();
    }

    [Benchmark(Baseline = true)]
    public bool RateLimitingOff()
    {
        using var permit = _off.TryEnter(_context);
        return permit.IsAcquired;
    }

    [Benchmark]
    public bool RateLimitingOn()
    {
        using var permit = _on.TryEnter(_context);
        return permit.IsAcquired;
    }
}
