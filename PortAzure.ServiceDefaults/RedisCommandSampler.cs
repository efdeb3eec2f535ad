using System.Diagnostics;
using OpenTelemetry.Trace;

namespace Microsoft.Extensions.Hosting;

/// <summary>
/// Drops a Redis command span that belongs to no trace, or to a span that is not recorded; every other span is left to the
/// sampler given.
/// </summary>
/// <param name="others">What decides every other span.</param>
/// <remarks>
/// Where Redis command spans are on (the local AppHost), a command made outside any span was a trace of its own: the
/// Dispatcher's and the reporter's polls made several a second, and buried the runs' traces in the dashboard's list. A run's
/// commands (the Ingress's enqueue, the Dispatcher's finish) are made inside its spans, and are kept. Under a span left out
/// (a health probe's request, filtered from the traces) a command would start a trace of its own too: always_on, which the
/// AppHost sets, does not look at the parent. Aspire's Redis instrumentation has a filter that could tell them apart, but
/// does not let it be set.
/// </remarks>
internal sealed class RedisCommandSampler(Sampler others) : Sampler
{
    private static readonly SamplingResult Dropped = new(SamplingDecision.Drop);

    public override SamplingResult ShouldSample(in SamplingParameters samplingParameters) =>
        (samplingParameters.ParentContext.TraceId == default || !samplingParameters.ParentContext.TraceFlags.HasFlag(ActivityTraceFlags.Recorded))
            && samplingParameters.Kind == ActivityKind.Client && IsRedis(samplingParameters.Tags)
            ? Dropped
            : others.ShouldSample(samplingParameters);

    // The instrumentation names the system at creation in the older convention's key or the newer one's.
    private static bool IsRedis(IEnumerable<KeyValuePair<string, object?>>? tags) =>
        tags is not null && tags.Any(t => t.Key is "db.system" or "db.system.name" && t.Value as string == "redis");
}
