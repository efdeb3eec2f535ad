using System.Text.RegularExpressions;

namespace PortAzure.Targets;

/// <summary>Azure's rules for the two path segments the relay forwards.</summary>
public static partial class TargetNames
{
    /// <summary>Organisation names: letters, digits and hyphens, not starting or ending with a hyphen, at most 50.</summary>
    public static bool IsValidOrg(string? org) => org is { Length: > 0 and <= 50 } && OrgPattern().IsMatch(org);

    /// <summary>Incoming webhook names: <c>[-_A-Za-z0-9]</c>, at most 100 here.</summary>
    public static bool IsValidWebhook(string? webhook) => webhook is { Length: > 0 and <= 100 } && WebhookPattern().IsMatch(webhook);

    // \z, not $: $ also matches before a final '\n', which would let "deploy%0A" through to Azure's URL.
    [GeneratedRegex("^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\\z", RegexOptions.CultureInvariant)]
    private static partial Regex OrgPattern();

    [GeneratedRegex("^[-_A-Za-z0-9]+\\z", RegexOptions.CultureInvariant)]
    private static partial Regex WebhookPattern();
}
