using PortAzure.Signing;

namespace PortAzure.Targets;

/// <summary>Where runs are delivered and how they are signed (<c>AzureDevOps:*</c>).</summary>
public sealed class AzureDevOpsOptions
{
    public const string SectionName = "AzureDevOps";
    public const string DefaultBaseUrl = "https://dev.azure.com";

    /// <summary>Azure DevOps (or the emulator) root; the org and webhook path is appended to it.</summary>
    public Uri BaseUrl { get; set; } = new(DefaultBaseUrl);

    /// <summary>The header Azure's service connection reads the HMAC-SHA1 from.</summary>
    public string SignatureHeader { get; set; } = "X-Port-Signature";

    public SignatureFormat SignatureFormat { get; set; } = SignatureFormat.Hex;

    /// <summary>When not empty, the only targets runs are accepted for and delivered to.</summary>
    public IList<AzureDevOpsTarget> Targets { get; } = [];

    public AzureDevOpsTarget? FindTarget(string org, string webhook) =>
        Targets.FirstOrDefault(t =>
            string.Equals(t.Org, org, StringComparison.OrdinalIgnoreCase) &&
            string.Equals(t.Webhook, webhook, StringComparison.OrdinalIgnoreCase));

    /// <summary>True when the target list is empty (anything valid goes) or names this target.</summary>
    public bool IsAllowed(string org, string webhook) => Targets.Count == 0 || FindTarget(org, webhook) is not null;
}

public sealed class AzureDevOpsTarget
{
    public string Org { get; set; } = "";
    public string Webhook { get; set; } = "";

    /// <summary>The service connection's secret; <c>Port:ClientSecret</c> when not set.</summary>
    public string? Secret { get; set; }
}
