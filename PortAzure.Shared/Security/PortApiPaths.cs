namespace PortAzure.Security;

/// <summary>What may stand as a segment of a Port API path the relay calls (<c>/v1/actions/runs/{runId}/logs</c>).</summary>
public static class PortApiPaths
{
    /// <summary>
    /// Whether <paramref name="segment"/> is <c>.</c> or <c>..</c>: escaping leaves dots alone and the URI resolves them, so
    /// the call, the relay's token with it, would reach another path (<c>/v1/actions/runs/../logs</c> is
    /// <c>/v1/actions/logs</c>).
    /// </summary>
    public static bool IsDotSegment(string segment) => segment is "." or "..";
}
