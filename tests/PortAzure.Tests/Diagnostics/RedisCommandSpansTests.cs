using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Trace;
using PortAzure.Diagnostics;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Diagnostics;

/// <summary>Redis command spans, where they are on (the local AppHost), through the services' own tracer provider.</summary>
/// <remarks>
/// One host at a time (no test elsewhere turns these spans on): every tracer provider in the process gets every span of the
/// instrumentation, whichever host made it, so hosts side by side would see each other's.
/// </remarks>
public class RedisCommandSpansTests
{
    private const string RedisInstrumentation = "OpenTelemetry.Instrumentation.StackExchangeRedis";

    [Fact]
    public async Task RedisCommand_OutsideAnySpan_IsNotATraceOfItsOwn_InsideASpan_IsKeptUnderIt()
    {
        // The Dispatcher's polls, outside any span, made several one-span traces a second and buried the runs' traces.
        var (redisSpans, parent, _) = await RedisSpansAsync(otelTracesSampler: null);

        Assert.Contains(redisSpans, a => a.ParentSpanId == parent);
        Assert.All(redisSpans, a => Assert.NotEqual(default, a.ParentSpanId));
    }

    [Fact]
    public async Task RedisCommand_OutsideAnySpanUnderTheAppHostsAlwaysOn_IsNotATraceOfItsOwn()
    {
        // The AppHost's run mode sets OTEL_TRACES_SAMPLER=always_on for the local dashboard: the one place the spans are on.
        var (redisSpans, parent, unrecorded) = await RedisSpansAsync(otelTracesSampler: "always_on");

        Assert.Contains(redisSpans, a => a.ParentSpanId == parent);
        Assert.All(redisSpans, a => Assert.NotEqual(default, a.ParentSpanId));
        // Under a span left out (a health probe's request): a trace with no root every 30 s in the dashboard.
        Assert.DoesNotContain(redisSpans, a => a.ParentSpanId == unrecorded);
    }

    [Fact]
    public async Task RedisCommand_OtelTracesSamplerGiven_ThatSamplerDecides()
    {
        // A sampler set in code wins over OTEL_TRACES_SAMPLER, which the SDK then ignores without a word: sampling chosen for a
        // deployment must stand, Redis command spans outside a trace with it.
        var (redisSpans, parent, _) = await RedisSpansAsync(otelTracesSampler: "parentbased_always_on");

        Assert.Contains(redisSpans, a => a.ParentSpanId == parent);
        Assert.Contains(redisSpans, a => a.ParentSpanId == default);
    }

    /// <summary>
    /// The Redis command spans of a host with the service defaults, after one command made outside any span, one inside a
    /// span that is not recorded, and one inside a span: the ids of those two spans.
    /// </summary>
    private static async Task<(List<Activity> RedisSpans, ActivitySpanId Parent, ActivitySpanId Unrecorded)> RedisSpansAsync(string? otelTracesSampler)
    {
        await using var lease = await SharedRedis.LeaseAsync();
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { EnvironmentName = "Testing" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Aspire:StackExchange:Redis:DisableTracing"] = "false",
            ["OTEL_TRACES_SAMPLER"] = otelTracesSampler,
        });
        builder.Logging.ClearProviders();
        builder.AddServiceDefaults();
        builder.AddPortAzureRedisClient();
        var ended = new ConcurrentQueue<Activity>();
        builder.Services.AddOpenTelemetry().WithTracing(tracing => tracing.AddProcessor(new Collect(ended)));
        using var host = builder.Build();
        await host.StartAsync();
        var db = host.Services.GetRequiredService<IConnectionMultiplexer>().GetDatabase();

        Assert.Null(Activity.Current);
        await db.StringSetAsync("outside-" + Guid.NewGuid().ToString("N"), "1", TimeSpan.FromMinutes(1));
        // As OpenTelemetry leaves a request its filter drops.
        var unrecorded = new Activity("a probe's request, filtered out").SetParentId(ActivityTraceId.CreateRandom(), ActivitySpanId.CreateRandom(),
            ActivityTraceFlags.None).SetIdFormat(ActivityIdFormat.W3C);
        unrecorded.Start();
        unrecorded.IsAllDataRequested = false;
        await db.StringSetAsync("unrecorded-" + Guid.NewGuid().ToString("N"), "1", TimeSpan.FromMinutes(1));
        unrecorded.Stop();
        ActivitySpanId parent;
        using (var span = PortAzureDiagnostics.ActivitySource.StartActivity("a run's work"))
        {
            Assert.NotNull(span);
            parent = span.SpanId;
            await db.StringSetAsync("inside-" + Guid.NewGuid().ToString("N"), "1", TimeSpan.FromMinutes(1));
        }

        // The instrumentation makes the command spans when it flushes its profiling sessions: every 10 s, and when the tracer
        // provider is disposed with the host (a flush that cannot be asked for otherwise).
        await host.StopAsync();
        host.Dispose();
        Assert.True(ended.Any(a => a.ParentSpanId == parent && a.Source.Name == RedisInstrumentation),
            "the command made inside a span is traced under it; ended: " + string.Join(", ", ended.Select(a => $"{a.Source.Name}/{a.DisplayName}/{a.ParentSpanId}")));
        // Only the Redis instrumentation's: the provider also gets every HttpClient and server span of the tests beside this one.
        return ([.. ended.Where(a => a.Source.Name == RedisInstrumentation)], parent, unrecorded.SpanId);
    }

    private sealed class Collect(ConcurrentQueue<Activity> ended) : BaseProcessor<Activity>
    {
        public override void OnEnd(Activity data) => ended.Enqueue(data);
    }
}
