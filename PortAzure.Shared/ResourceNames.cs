namespace PortAzure;

/// <summary>Aspire resource and connection names, shared by the AppHost and the services.</summary>
public static class ResourceNames
{
    public const string Redis = "redis";
    public const string Ingress = "ingress";
    public const string Dispatcher = "dispatcher";
    public const string AzureDevOpsEmulator = "azure-devops-emulator";
}
