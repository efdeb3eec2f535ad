using System.Reflection;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Kestrel's connection-level limits with the Ingress's defaults; every key under Kestrel's own
/// <c>Kestrel:Limits</c> section (e.g. <c>Kestrel:Limits:MaxRequestHeadersTotalSize</c>) overrides them.
/// </summary>
internal sealed class KestrelLimitsSetup(IConfiguration configuration, IOptions<IngressOptions> ingressOptions) : IConfigureOptions<KestrelServerOptions>
{
    public const string SectionName = "Kestrel:Limits";

    /// <summary>
    /// Room above <c>Ingress:MaxBodyBytes</c>: a moderately large body reaches the handler, which answers
    /// its own 413 problem, while anything far larger (draining after that answer included) is cut by Kestrel.
    /// </summary>
    public const long BodySlackBytes = 64 * 1024;

    public const double DefaultMinBodyBytesPerSecond = 4096;

    public void Configure(KestrelServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var limits = options.Limits;
        limits.MaxRequestHeadersTotalSize = 32 * 1024;
        limits.MaxRequestHeaderCount = 100;
        // Kestrel's own default is 30 s: a slow-header client would hold a connection three times as long.
        limits.RequestHeadersTimeout = TimeSpan.FromSeconds(10);
        // Kestrel's own default, 240 B/s, lets a 1 MiB body take over an hour, each such upload holding its buffer (a few
        // thousand slow uploads took 150 MB in 20 s). Port sends a run in one burst: 4 KiB/s bounds a full body to ~4 min.
        limits.MinRequestBodyDataRate = new MinDataRate(bytesPerSecond: DefaultMinBodyBytesPerSecond, gracePeriod: TimeSpan.FromSeconds(5));
        if (ingressOptions.ValueOrNull() is { } ingress)
        {
            limits.MaxRequestBodySize = ingress.MaxBodyBytes + BodySlackBytes;
        }
        // No cap on open connections by default: idle keep-alive connections count towards it, so one client
        // holding many could lock every other client out (docs/benchmarks.md, run m). Kestrel:Limits can set one.

        // Bound again after the defaults, so an operator's value wins whether or not the host already bound it.
        var section = configuration.GetSection(SectionName);
        try
        {
            section.Bind(limits);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is ArgumentException)
        {
            // Kestrel's setter refused a value (a negative count, a zero size). Its message names no key, and escaping the
            // host's build it aborted the process (exit 134) instead of a refusal that says which value is wrong.
            throw new InvalidOperationException(RefusedLimits(section), ex.InnerException);
        }
        // The binder cannot set MinDataRate (read-only properties, set through its constructor).
        limits.MinRequestBodyDataRate = DataRate(section, nameof(KestrelServerLimits.MinRequestBodyDataRate), limits.MinRequestBodyDataRate);
        limits.MinResponseDataRate = DataRate(section, nameof(KestrelServerLimits.MinResponseDataRate), limits.MinResponseDataRate);
    }

    /// <summary>Each value under the section that Kestrel's limits refuse, with Kestrel's reason, in one message.</summary>
    private static string RefusedLimits(IConfigurationSection section)
    {
        var refused = new List<string>();
        foreach (var (key, value) in section.AsEnumerable(makePathsRelative: true))
        {
            if (value is null)
            {
                continue;
            }
            // One key at a time into limits of their own: which one Kestrel refuses.
            var alone = new ConfigurationBuilder().AddInMemoryCollection([new(key, value)]).Build();
            try
            {
                alone.Bind(new KestrelServerLimits());
            }
            catch (TargetInvocationException ex) when (ex.InnerException is ArgumentException refusal)
            {
                refused.Add($"{SectionName}:{key} is out of range ('{value}'): {ExceptionMessages.WithoutParameter(refusal)}");
            }
            catch (InvalidOperationException)
            {
                // Not of its key's kind: the binder's own message, from the whole section, names it.
            }
        }
        return refused.Count == 0 ? $"{SectionName} holds a value Kestrel refuses." : string.Join(" ", refused);
    }

    /// <summary><c>{name}:BytesPerSecond</c> and <c>{name}:GracePeriod</c>; a rate of 0 turns the check off.</summary>
    private static MinDataRate? DataRate(IConfigurationSection limits, string name, MinDataRate? current)
    {
        var section = limits.GetSection(name);
        if (!section.Exists())
        {
            return current;
        }
        var bytesPerSecond = section.GetValue(nameof(MinDataRate.BytesPerSecond), current?.BytesPerSecond ?? DefaultMinBodyBytesPerSecond);
        var gracePeriod = section.GetValue(nameof(MinDataRate.GracePeriod), current?.GracePeriod ?? TimeSpan.FromSeconds(5));
        if (bytesPerSecond == 0)
        {
            return null;
        }
        if (!(bytesPerSecond > 0) || double.IsPositiveInfinity(bytesPerSecond))
        {
            // Below 0 read as "off" (Kestrel's default slow-body protection gone by a typo), and an infinite rate cut every body.
            throw new InvalidOperationException($"{SectionName}:{name}:{nameof(MinDataRate.BytesPerSecond)} must be a number of 0 (no minimum rate) or more, not '{bytesPerSecond}'.");
        }
        try
        {
            return new MinDataRate(bytesPerSecond, gracePeriod);
        }
        catch (ArgumentOutOfRangeException ex)
        {
            throw new InvalidOperationException($"{SectionName}:{name} is out of range (the grace period must be over 1 s): {ex.Message}", ex);
        }
    }
}
