using System.Text.Json;
using PortAzure.Security;

namespace PortAzure.Ingress.Webhooks;

/// <summary>
/// Finds the Port run id in a body: <c>context.runId</c> (v1 run messages), then the places users
/// commonly template it into v2 bodies: <c>port_context.runId</c>, <c>run_id</c>, <c>run.id</c>.
/// </summary>
internal static class RunIdExtractor
{
    private static readonly string[][] Paths =
    [
        ["context", "runId"],
        ["port_context", "runId"],
        ["run_id"],
        ["run", "id"],
    ];

    /// <summary>The first string found at one of the known paths, or <see langword="null"/>.</summary>
    public static string? Find(JsonElement root)
    {
        foreach (var path in Paths)
        {
            var current = root;
            var found = true;
            foreach (var segment in path)
            {
                if (current.ValueKind != JsonValueKind.Object || !current.TryGetProperty(segment, out current))
                {
                    found = false;
                    break;
                }
            }
            if (found && current.ValueKind == JsonValueKind.String && current.GetString() is { Length: > 0 } runId)
            {
                return runId;
            }
        }
        return null;
    }

    /// <summary>
    /// Run ids and idempotency keys become Redis key parts and headers: printable ASCII only. Not <c>.</c> or <c>..</c>:
    /// a run id is a segment of Port's API paths (<see cref="PortApiPaths.IsDotSegment"/>).
    /// </summary>
    public static bool IsAcceptable(string value, int maxLength) =>
        value.Length > 0 && value.Length <= maxLength && !value.AsSpan().ContainsAnyExceptInRange('!', '~') && !PortApiPaths.IsDotSegment(value);
}
